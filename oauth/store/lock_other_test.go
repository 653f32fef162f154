//go:build !(linux || darwin || freebsd || openbsd || netbsd || dragonfly || illumos || windows)

package store

const fileLocks = false

func tryLock(string) (bool, error) { return true, nil }
