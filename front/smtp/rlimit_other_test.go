//go:build !linux && !darwin

package smtp

func raiseFileLimit(uint64) {}

func fileLimit() uint64 { return 0 }
