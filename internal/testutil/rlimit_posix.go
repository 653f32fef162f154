//go:build linux || darwin

package testutil

import "syscall"

// RaiseFileLimit raises the soft limit on open files to want, or to the
// hard limit if that is lower. Go raises it on its own since 1.19, but not
// past a hard limit a CI container may set low.
func RaiseFileLimit(want uint64) {
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) != nil || rl.Cur >= want {
		return
	}
	rl.Cur = min(want, rl.Max)
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
}

// FileLimit returns the soft limit on open files, 0 if unknown.
func FileLimit() uint64 {
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) != nil {
		return 0
	}
	return rl.Cur
}
