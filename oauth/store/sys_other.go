//go:build !unix

package store

import "io/fs"

// checkDir does nothing here: on Windows the directory's ACL, inherited from
// the user's profile or set by the installer, is what protects the files.
func checkDir(string, fs.FileInfo) error { return nil }

// syncDir does nothing: directories cannot be opened for fsync here, and
// the rename is durable once it returns.
func syncDir(string) error { return nil }
