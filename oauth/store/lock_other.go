//go:build !(linux || darwin || freebsd || openbsd || netbsd || dragonfly || illumos || windows)

package store

import "os"

// lockFile takes no file lock on this system: only the in-process mutex of
// Store.Lock protects writers, so do not run `mailproxy login` for an account
// while `serve` is refreshing its tokens.
func lockFile(string) (*os.File, error) { return nil, nil }

func unlockFile(*os.File) {}
