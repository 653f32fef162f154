//go:build windows

package store

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/windows"
)

// A program that holds the file open without FILE_SHARE_DELETE (os.Open,
// most backup agents) makes MoveFileEx fail with a sharing or access
// violation: replaceFile retries, then gives up with an error naming both
// files; once the handle is closed the replace goes through.
func TestReplaceRetriesWhileHeldOpen(t *testing.T) {
	dir := t.TempDir()
	dst := filepath.Join(dir, "alice.token")
	tmp := filepath.Join(dir, "alice.token.1.tmp")
	if err := os.WriteFile(dst, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tmp, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	held, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer func(d time.Duration) { replaceRetry = d }(replaceRetry)
	replaceRetry = 100 * time.Millisecond
	err = replaceFile(tmp, dst)
	var le *os.LinkError
	if err == nil || !errors.As(err, &le) || le.Old != tmp || le.New != dst {
		held.Close()
		t.Fatalf("replaceFile() while %s is held open = %v, want a *os.LinkError naming both files", dst, err)
	}
	if !errors.Is(err, windows.ERROR_SHARING_VIOLATION) && !errors.Is(err, windows.ERROR_ACCESS_DENIED) {
		t.Errorf("replaceFile() = %v, want a sharing or access violation", err)
	}
	held.Close()
	if err := replaceFile(tmp, dst); err != nil {
		t.Fatalf("replaceFile() after the handle closed = %v", err)
	}
	if data, _ := os.ReadFile(dst); string(data) != "new" {
		t.Errorf("%s = %q after the replace, want \"new\"", dst, data)
	}
}

func TestOpenReadMissing(t *testing.T) {
	_, err := openRead(filepath.Join(t.TempDir(), "none.token"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("openRead(missing) = %v, want os.ErrNotExist", err)
	}
}
