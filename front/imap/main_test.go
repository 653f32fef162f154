package imap

import (
	"mailproxy/internal/testutil"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// The hostile-input tests open 1000 connections at once, two file
	// descriptors each in this process.
	testutil.RaiseFileLimit(4096)
	os.Exit(m.Run())
}
