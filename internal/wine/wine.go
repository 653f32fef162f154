// Package wine tells tests whether they run under Wine, so that what Wine
// does not do (the service manager, the Event Log, NTFS ACLs) is skipped
// with the reason, not failed. See .ci/steps/40-windows-tests.
package wine

import "testing"

// SkipIf skips t under Wine, saying why.
func SkipIf(t testing.TB, why string) {
	t.Helper()
	if Detected() {
		t.Skip("under Wine: " + why)
	}
}
