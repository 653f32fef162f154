//go:build !linux && !darwin

package imap

func raiseFileLimit(uint64) {}

func fileLimit() uint64 { return 0 }
