//go:build linux || darwin || freebsd || openbsd || netbsd || dragonfly || illumos

package store

import (
	"errors"
	"os"
	"syscall"
)

// lockFile opens path and takes an exclusive flock(2) on it. flock locks
// belong to the open file description, so they also exclude other
// descriptors of the same process.
func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// unlockFile releases a lock taken by lockFile. The lock file stays: removing
// it would let a waiter lock an unlinked file while a newcomer locks a new one.
func unlockFile(f *os.File) {
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	f.Close()
}
