//go:build windows

package store

import (
	"os"

	"golang.org/x/sys/windows"
)

// lockFile opens path and takes an exclusive LockFileEx lock on the whole
// file, waiting for it. The lock belongs to the handle, so it excludes other
// handles of this process as well as other processes (`mailproxy login`
// against a running service), like flock on Unix.
func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	ol := new(windows.Overlapped)
	if err := windows.LockFileEx(windows.Handle(f.Fd()), windows.LOCKFILE_EXCLUSIVE_LOCK, 0, ^uint32(0), ^uint32(0), ol); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// unlockFile releases a lock taken by lockFile; closing the handle would
// too, but not at once. The lock file stays, as on Unix.
func unlockFile(f *os.File) {
	ol := new(windows.Overlapped)
	windows.UnlockFileEx(windows.Handle(f.Fd()), 0, ^uint32(0), ^uint32(0), ol)
	f.Close()
}
