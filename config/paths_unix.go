//go:build unix

package config

import (
	"os"
	"syscall"
)

// ownedByUs reports whether dir is a directory owned by our effective uid.
func ownedByUs(dir string) bool {
	fi, err := os.Stat(dir)
	if err != nil || !fi.IsDir() {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Geteuid()
}
