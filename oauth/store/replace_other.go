//go:build !windows

package store

import "os"

// openRead opens a token file for reading.
func openRead(path string) (*os.File, error) { return os.Open(path) }

// replaceFile renames tmp over dst; rename(2) replaces atomically.
func replaceFile(tmp, dst string) error { return os.Rename(tmp, dst) }
