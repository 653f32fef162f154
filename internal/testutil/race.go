//go:build race

package testutil

// Race reports whether the race detector is on. Tests that move hundreds
// of megabytes run smaller under it (it makes them ten times slower) and
// at full size without it; .ci/run runs those without it too.
const Race = true
