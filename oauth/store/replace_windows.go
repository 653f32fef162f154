//go:build windows

package store

import (
	"errors"
	"os"
	"time"

	"golang.org/x/sys/windows"
)

// openRead opens a token file for reading and lets it be replaced or
// removed while it is open (FILE_SHARE_DELETE, which os.Open does not ask
// for): a service reading an entry must not make a `login` replacing it fail.
func openRead(path string) (*os.File, error) {
	p, err := windows.UTF16PtrFromString(path)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	h, err := windows.CreateFile(p, windows.GENERIC_READ,
		windows.FILE_SHARE_READ|windows.FILE_SHARE_WRITE|windows.FILE_SHARE_DELETE,
		nil, windows.OPEN_EXISTING, windows.FILE_ATTRIBUTE_NORMAL, 0)
	if err != nil {
		if errors.Is(err, windows.ERROR_FILE_NOT_FOUND) || errors.Is(err, windows.ERROR_PATH_NOT_FOUND) {
			err = os.ErrNotExist
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(h), path), nil
}

// replaceRetry bounds how long replaceFile retries while another program
// (a backup agent, a virus scanner, an editor) holds the target open
// without FILE_SHARE_DELETE.
var replaceRetry = 3 * time.Second

// replaceFile renames tmp over dst: MoveFileEx with MOVEFILE_REPLACE_EXISTING
// replaces atomically, and MOVEFILE_WRITE_THROUGH returns only once the
// rename is on disk (there is no directory fsync on Windows). Sharing and
// access violations are retried with backoff up to replaceRetry: they are
// how Windows says someone has dst open right now.
func replaceFile(tmp, dst string) error {
	from, err := windows.UTF16PtrFromString(tmp)
	if err != nil {
		return &os.LinkError{Op: "rename", Old: tmp, New: dst, Err: err}
	}
	to, err := windows.UTF16PtrFromString(dst)
	if err != nil {
		return &os.LinkError{Op: "rename", Old: tmp, New: dst, Err: err}
	}
	deadline := time.Now().Add(replaceRetry)
	wait := 5 * time.Millisecond
	for {
		err = windows.MoveFileEx(from, to, windows.MOVEFILE_REPLACE_EXISTING|windows.MOVEFILE_WRITE_THROUGH)
		if err == nil {
			return nil
		}
		busy := errors.Is(err, windows.ERROR_SHARING_VIOLATION) || errors.Is(err, windows.ERROR_ACCESS_DENIED) || errors.Is(err, windows.ERROR_LOCK_VIOLATION)
		if !busy || time.Now().Add(wait).After(deadline) {
			return &os.LinkError{Op: "rename", Old: tmp, New: dst, Err: err}
		}
		time.Sleep(wait)
		wait = min(2*wait, 200*time.Millisecond)
	}
}
