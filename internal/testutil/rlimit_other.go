//go:build !linux && !darwin

package testutil

func RaiseFileLimit(uint64) {}

func FileLimit() uint64 { return 0 }
