//go:build !linux

package main

// systemd exists only on Linux: elsewhere the notify calls of serve do
// nothing. notify.go has the real ones.

func sdNotify(string) error     { return nil }
func notifyReady(string) error  { return nil }
func notifyReloading() error    { return nil }
func notifyStopping() error     { return nil }
func notifyStatus(string) error { return nil }
