package spool

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fullFile fails with ENOSPC once more than room bytes were written, as a
// file on a full disk does.
type fullFile struct {
	f    *os.File
	room int
}

func (f *fullFile) Write(p []byte) (int, error) {
	if len(p) > f.room {
		n, _ := f.f.Write(p[:f.room])
		f.room = 0
		return n, &os.PathError{Op: "write", Path: f.f.Name(), Err: syscall.ENOSPC}
	}
	f.room -= len(p)
	return f.f.Write(p)
}
func (f *fullFile) Sync() error  { return f.f.Sync() }
func (f *fullFile) Close() error { return f.f.Close() }

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	var names []string
	for _, sub := range []string{"tmp", "queue"} {
		ents, err := os.ReadDir(filepath.Join(dir, sub))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			names = append(names, sub+"/"+e.Name())
		}
	}
	return names
}

// A full disk at intake: the error says so (the front answers 452), and
// nothing of the message remains, in tmp/ or the queue.
func TestFullDiskAtIntake(t *testing.T) {
	for _, room := range []int{0, 10, 100, 5000} {
		e := newEnv(t, nil)
		e.store.create = func(name string) (syncFile, error) {
			f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
			if err != nil {
				return nil, err
			}
			return &fullFile{f: f, room: room}, nil
		}
		_, err := e.sp.Enqueue(&Envelope{Account: testMailbox, Mailbox: testMailbox, From: testMailbox,
			To: []string{"bob@example.com"}}, strings.NewReader(testMessage("x")+strings.Repeat("y", 100000)))
		if !errors.Is(err, ErrNoSpace) {
			t.Errorf("room %d: Enqueue error = %v, want ErrNoSpace", room, err)
		}
		if left := dirEntries(t, e.dir); len(left) != 0 {
			t.Errorf("room %d: files left after a full disk: %v", room, left)
		}
		if st := e.sp.Status(); len(st) != 0 && st[0].Depth != 0 {
			t.Errorf("room %d: queued %d, want 0", room, st[0].Depth)
		}
	}
}

func TestTooBigAndBrokenReader(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxMessageBytes = 1000 })
	_, err := e.sp.Enqueue(&Envelope{Account: testMailbox, Mailbox: testMailbox, From: testMailbox,
		To: []string{"bob@example.com"}}, strings.NewReader(strings.Repeat("x", 1001)))
	if !errors.Is(err, ErrTooBig) {
		t.Errorf("Enqueue of 1001 bytes = %v, want ErrTooBig", err)
	}
	broken := io.MultiReader(strings.NewReader("Subject: half\r\n"), iotestErrReader{})
	_, err = e.sp.Enqueue(&Envelope{Account: testMailbox, Mailbox: testMailbox, From: testMailbox,
		To: []string{"bob@example.com"}}, broken)
	if err == nil || errors.Is(err, ErrNoSpace) {
		t.Errorf("Enqueue from a broken connection = %v, want the read error (not a full disk)", err)
	}
	if left := dirEntries(t, e.dir); len(left) != 0 {
		t.Errorf("files left: %v", left)
	}
}

type iotestErrReader struct{}

func (iotestErrReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

func TestOpenDirRemovesPartialFiles(t *testing.T) {
	dir := t.TempDir()
	st, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	os.WriteFile(filepath.Join(dir, "tmp", "half"), []byte("mailproxy-spool 1 9"), 0o600)
	if _, err := OpenDir(dir); err != nil {
		t.Fatal(err)
	}
	if left := dirEntries(t, dir); len(left) != 0 {
		t.Errorf("after OpenDir: %v, want tmp/ emptied", left)
	}
	fi, _ := os.Stat(filepath.Join(dir, "queue"))
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("queue dir mode %o, want 700", fi.Mode().Perm())
	}
}

func TestPutOpenRoundTripAndModes(t *testing.T) {
	st, err := OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	msg := "Subject: x\r\n\r\n\x00binary\xff\r\n.\r\n"
	env := &Envelope{ID: "a1", Received: time.Now(), Account: "a", Mailbox: "m@x", From: "f@x", To: []string{"t@x"}}
	n, err := st.Put(env, strings.NewReader(msg), 0)
	if err != nil || n != int64(len(msg)) {
		t.Fatalf("Put = %d, %v", n, err)
	}
	rc, err := st.Open("a1")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if string(got) != msg {
		t.Errorf("Open read %q, want %q", got, msg)
	}
	fi, _ := os.Stat(filepath.Join(st.Dir(), "queue", "a1"))
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("queue file mode %o, want 600", fi.Mode().Perm())
	}
	if _, err := st.Open("../etc"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open(../etc) = %v, want ErrNotFound", err)
	}
}

// A torn last journal line (a crash mid-write) is skipped, and the next
// event starts on a line of its own.
func TestJournalTornLine(t *testing.T) {
	st, err := OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	day := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	os.WriteFile(filepath.Join(st.Dir(), "log", "2026-12-01.jsonl"), []byte(`{"t":"2026-12-01T09:00:00Z","id":"x","ev":"rec`), 0o600)
	if err := st.Append(true, Event{Time: day, ID: "y", Kind: EvReceived}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	st.Events(day.Add(-time.Hour), func(ev Event) bool { ids = append(ids, ev.ID); return true })
	if len(ids) != 1 || ids[0] != "y" {
		t.Errorf("events = %v, want [y]", ids)
	}
	if err := st.Prune(day.Add(48 * time.Hour)); err != nil {
		t.Fatal(err)
	}
}
