//go:build linux || darwin || freebsd || openbsd || netbsd || dragonfly || illumos

package store

import (
	"errors"
	"os"
	"syscall"
)

const fileLocks = true

// tryLock reports whether path can be locked right now, from a new handle.
func tryLock(path string) (bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return false, err
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return false, nil
	}
	return err == nil, err
}
