//go:build windows

package wine

import (
	"os"

	"golang.org/x/sys/windows/registry"
)

// Detected reports whether this process runs under Wine: Wine creates the
// registry key HKLM\Software\Wine; .ci/steps/40-windows-tests also sets
// MAILPROXY_WINE=1.
func Detected() bool {
	if os.Getenv("MAILPROXY_WINE") == "1" {
		return true
	}
	k, err := registry.OpenKey(registry.LOCAL_MACHINE, `Software\Wine`, registry.QUERY_VALUE)
	if err != nil {
		return false
	}
	k.Close()
	return true
}
