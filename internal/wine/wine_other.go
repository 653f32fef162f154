//go:build !windows

package wine

// Detected is false: Wine runs Windows programs only.
func Detected() bool { return false }
