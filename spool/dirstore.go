package spool

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Layout of a DirStore (docs/DEVICES.md has the same text for admins):
//
//	<dir>/tmp/<id>            a message being received; removed at start
//	<dir>/queue/<id>          a queued message: a header line
//	                          "mailproxy-spool 1 <n>\n", n bytes of JSON
//	                          (the Envelope), "\n", then the message as
//	                          received, byte for byte
//	<dir>/log/<YYYY-MM-DD>.jsonl   the journal, one Event per line (UTC days)
//	<dir>/paused.json         the paused mailboxes
//
// A message is in the queue once its file is renamed from tmp/ to queue/
// and the queue directory is fsynced; only then is it acknowledged.
const (
	fileMagic   = "mailproxy-spool 1 "
	maxEnvelope = 1 << 20 // JSON of one envelope
	maxLogLine  = 1 << 20
	dirMode     = 0o700
	fileMode    = 0o600
)

// syncFile is the part of *os.File that Put writes through, so that tests
// can make the disk full.
type syncFile interface {
	io.Writer
	Sync() error
	Close() error
}

// DirStore is the embedded Store: files in one directory on local disk.
type DirStore struct {
	dir string

	// create opens a new file for writing; tests replace it.
	create func(name string) (syncFile, error)
	// afterPut runs once a message is durable, before Put returns
	// (tests: a crash there).
	afterPut func(id string)

	mu      sync.Mutex // protects logDay, logFile, paused
	logDay  string
	logFile *os.File
	paused  map[string]Pause // key: folded mailbox
}

var _ Store = (*DirStore)(nil)

// OpenDir opens (creating it if needed) the spool directory dir and
// removes what a crash left half written.
func OpenDir(dir string) (*DirStore, error) {
	for _, d := range []string{dir, filepath.Join(dir, "tmp"), filepath.Join(dir, "queue"), filepath.Join(dir, "log")} {
		if err := os.MkdirAll(d, dirMode); err != nil {
			return nil, fmt.Errorf("open spool %s: %w", dir, err)
		}
	}
	// A file in tmp/ was never acknowledged: the sender got no 250 and
	// will send it again (or was told 452).
	tmp, err := os.ReadDir(filepath.Join(dir, "tmp"))
	if err != nil {
		return nil, fmt.Errorf("open spool %s: %w", dir, err)
	}
	for _, e := range tmp {
		os.Remove(filepath.Join(dir, "tmp", e.Name()))
	}
	s := &DirStore{dir: dir, paused: map[string]Pause{}}
	s.create = func(name string) (syncFile, error) {
		return os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
	}
	if err := s.loadPaused(); err != nil {
		return nil, err
	}
	return s, nil
}

// Dir returns the spool directory.
func (s *DirStore) Dir() string { return s.dir }

func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// noSpace says whether err is the disk being full.
func noSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, ErrNoSpace)
}

func wrapSpace(op string, err error) error {
	if noSpace(err) && !errors.Is(err, ErrNoSpace) {
		return fmt.Errorf("%s: %w: %w", op, ErrNoSpace, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// Put implements Store.
func (s *DirStore) Put(env *Envelope, r io.Reader, max int64) (size int64, err error) {
	if !validID(env.ID) {
		return 0, fmt.Errorf("spool put: bad queue id %q", env.ID)
	}
	meta, err := json.Marshal(env)
	if err != nil {
		return 0, fmt.Errorf("spool put %s: %w", env.ID, err)
	}
	tmp := filepath.Join(s.dir, "tmp", env.ID)
	f, err := s.create(tmp)
	if err != nil {
		return 0, wrapSpace("spool put "+env.ID, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	head := make([]byte, 0, len(fileMagic)+len(meta)+24)
	head = append(head, fileMagic...)
	head = strconv.AppendInt(head, int64(len(meta)), 10)
	head = append(head, '\n')
	head = append(head, meta...)
	head = append(head, '\n')
	if _, err := f.Write(head); err != nil {
		return 0, wrapSpace("spool put "+env.ID, err)
	}
	var src io.Reader = r
	if max > 0 {
		src = io.LimitReader(r, max+1)
	}
	n, err := copyBuffered(f, src)
	if err != nil {
		return 0, err
	}
	if max > 0 && n > max {
		return 0, fmt.Errorf("spool put %s: %w (limit %d bytes)", env.ID, ErrTooBig, max)
	}
	if err := f.Sync(); err != nil {
		return 0, wrapSpace("spool put "+env.ID+": fsync", err)
	}
	if err := f.Close(); err != nil {
		return 0, wrapSpace("spool put "+env.ID+": close", err)
	}
	final := filepath.Join(s.dir, "queue", env.ID)
	if err := os.Rename(tmp, final); err != nil {
		return 0, wrapSpace("spool put "+env.ID, err)
	}
	if err := syncDir(filepath.Join(s.dir, "queue")); err != nil {
		os.Remove(final)
		return 0, wrapSpace("spool put "+env.ID+": fsync queue dir", err)
	}
	if s.afterPut != nil {
		s.afterPut(env.ID)
	}
	return n, nil
}

func copyBuffered(dst io.Writer, src io.Reader) (int64, error) {
	buf := make([]byte, 64<<10)
	var n int64
	for {
		m, rerr := src.Read(buf)
		if m > 0 {
			w, werr := dst.Write(buf[:m])
			n += int64(w)
			if werr == nil && w < m {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return n, wrapSpace("spool put: write", werr)
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, fmt.Errorf("spool put: %w: %w", ErrSenderData, rerr)
		}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) { // EINVAL: Windows, some filesystems
		return err
	}
	return nil
}

// readHeader reads a queued file's envelope and returns the offset of the
// message.
func readHeader(f *os.File) (*Envelope, int64, error) {
	br := bufio.NewReaderSize(f, 4096)
	line, err := br.ReadSlice('\n')
	if err != nil || !bytes.HasPrefix(line, []byte(fileMagic)) {
		return nil, 0, errors.New("not a spool file")
	}
	n, err := strconv.Atoi(string(bytes.TrimSpace(line[len(fileMagic):])))
	if err != nil || n <= 0 || n > maxEnvelope {
		return nil, 0, errors.New("bad envelope length")
	}
	off := int64(len(line))
	meta := make([]byte, n+1)
	if _, err := io.ReadFull(br, meta); err != nil || meta[n] != '\n' {
		return nil, 0, errors.New("truncated envelope")
	}
	env := &Envelope{}
	if err := json.Unmarshal(meta[:n], env); err != nil {
		return nil, 0, fmt.Errorf("bad envelope: %w", err)
	}
	return env, off + int64(n) + 1, nil
}

// Open implements Store.
func (s *DirStore) Open(id string) (io.ReadCloser, error) {
	if !validID(id) {
		return nil, ErrNotFound
	}
	f, err := os.Open(filepath.Join(s.dir, "queue", id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("spool open %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("spool open %s: %w", id, err)
	}
	_, off, err := readHeader(f)
	if err == nil {
		_, err = f.Seek(off, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("spool open %s: %w", id, err)
	}
	return f, nil
}

// Remove implements Store. The directory is not fsynced: a removal a
// crash undoes is redone at start, because the journal says the message
// is done.
func (s *DirStore) Remove(id string) error {
	if !validID(id) {
		return ErrNotFound
	}
	err := os.Remove(filepath.Join(s.dir, "queue", id))
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("spool remove %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("spool remove %s: %w", id, err)
	}
	return nil
}

// Queued implements Store. Files that cannot be read are reported in the
// error and skipped; the others are returned.
func (s *DirStore) Queued() ([]*Envelope, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, "queue"))
	if err != nil {
		return nil, fmt.Errorf("spool list: %w", err)
	}
	var out []*Envelope
	var errs []error
	for _, e := range ents {
		if !validID(e.Name()) || !e.Type().IsRegular() {
			continue
		}
		f, err := os.Open(filepath.Join(s.dir, "queue", e.Name()))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		env, _, err := readHeader(f)
		f.Close()
		if err == nil && env.ID != e.Name() {
			err = errors.New("envelope id differs from the file name")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("spool file %s: %w", e.Name(), err))
			continue
		}
		out = append(out, env)
	}
	slices.SortFunc(out, func(a, b *Envelope) int {
		if c := a.Received.Compare(b.Received); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, errors.Join(errs...)
}

// ---- journal ----

const dayLayout = "2006-01-02"

// Append implements Store.
func (s *DirStore) Append(sync bool, evs ...Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var buf []byte
	for i, ev := range evs {
		day := ev.Time.UTC().Format(dayLayout)
		if day != s.logDay {
			if err := s.flushLocked(buf, sync); err != nil {
				return err
			}
			buf = buf[:0]
			if err := s.openLogLocked(day); err != nil {
				return err
			}
		}
		b, err := json.Marshal(&evs[i])
		if err != nil {
			return fmt.Errorf("spool journal: %w", err)
		}
		buf = append(buf, b...)
		buf = append(buf, '\n')
	}
	return s.flushLocked(buf, sync)
}

func (s *DirStore) flushLocked(buf []byte, sync bool) error {
	if len(buf) == 0 || s.logFile == nil {
		return nil
	}
	if _, err := s.logFile.Write(buf); err != nil {
		return wrapSpace("spool journal", err)
	}
	if sync {
		if err := s.logFile.Sync(); err != nil {
			return wrapSpace("spool journal: fsync", err)
		}
	}
	return nil
}

func (s *DirStore) openLogLocked(day string) error {
	if s.logFile != nil {
		s.logFile.Close()
		s.logFile, s.logDay = nil, ""
	}
	name := filepath.Join(s.dir, "log", day+".jsonl")
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_APPEND, fileMode)
	if err != nil {
		return wrapSpace("spool journal", err)
	}
	// A crash in the middle of a line leaves it torn: start on a new one.
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, fi.Size()-1); err == nil && last[0] != '\n' {
			f.Write([]byte{'\n'})
		}
	} else if err == nil {
		syncDir(filepath.Join(s.dir, "log"))
	}
	s.logFile, s.logDay = f, day
	return nil
}

func (s *DirStore) logDays() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, "log"))
	if err != nil {
		return nil, fmt.Errorf("spool journal: %w", err)
	}
	var days []string
	for _, e := range ents {
		day, ok := strings.CutSuffix(e.Name(), ".jsonl")
		if _, err := time.Parse(dayLayout, day); ok && err == nil {
			days = append(days, day)
		}
	}
	slices.Sort(days)
	return days, nil
}

// Events implements Store. Lines a crash tore are skipped.
func (s *DirStore) Events(since time.Time, fn func(Event) bool) error {
	days, err := s.logDays()
	if err != nil {
		return err
	}
	first := since.UTC().Format(dayLayout)
	for _, day := range days {
		if day < first {
			continue
		}
		if !s.scanDay(day, since, fn) {
			return nil
		}
	}
	return nil
}

func (s *DirStore) scanDay(day string, since time.Time, fn func(Event) bool) bool {
	f, err := os.Open(filepath.Join(s.dir, "log", day+".jsonl"))
	if err != nil {
		return true
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), maxLogLine)
	for sc.Scan() {
		var ev Event
		if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.Time.Before(since) {
			continue
		}
		if !fn(ev) {
			return false
		}
	}
	return true
}

// Prune implements Store: whole days older than before go.
func (s *DirStore) Prune(before time.Time) error {
	days, err := s.logDays()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, day := range days {
		t, _ := time.Parse(dayLayout, day)
		if !t.Add(24*time.Hour).After(before) && day != s.logDay {
			if err := os.Remove(filepath.Join(s.dir, "log", day+".jsonl")); err != nil {
				return fmt.Errorf("spool prune: %w", err)
			}
		}
	}
	return nil
}

// ---- paused mailboxes ----

func (s *DirStore) loadPaused() error {
	data, err := os.ReadFile(filepath.Join(s.dir, "paused.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("spool paused.json: %w", err)
	}
	var list []Pause
	if err := json.Unmarshal(data, &list); err != nil {
		return fmt.Errorf("spool paused.json: %w", err)
	}
	for _, p := range list {
		s.paused[foldAddr(p.Mailbox)] = p
	}
	return nil
}

// SetPaused implements Store.
func (s *DirStore) SetPaused(mailbox string, p *Pause) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := foldAddr(mailbox)
	old, had := s.paused[k]
	if p != nil {
		s.paused[k] = *p
	} else {
		delete(s.paused, k)
	}
	if err := s.writePausedLocked(); err != nil {
		if had {
			s.paused[k] = old
		} else {
			delete(s.paused, k)
		}
		return err
	}
	return nil
}

func (s *DirStore) writePausedLocked() error {
	list := make([]Pause, 0, len(s.paused))
	for _, p := range s.paused {
		list = append(list, p)
	}
	slices.SortFunc(list, func(a, b Pause) int { return strings.Compare(a.Mailbox, b.Mailbox) })
	data, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(s.dir, "paused.json"), append(data, '\n'))
}

// Paused implements Store.
func (s *DirStore) Paused() ([]Pause, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Pause, 0, len(s.paused))
	for _, p := range s.paused {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Pause) int { return strings.Compare(a.Mailbox, b.Mailbox) })
	return out, nil
}

// writeAtomic writes a small file: temp file, fsync, rename, fsync dir.
func writeAtomic(name string, data []byte) error {
	tmp := name + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fileMode)
	if err != nil {
		return wrapSpace("write "+name, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, name)
	}
	if err != nil {
		os.Remove(tmp)
		return wrapSpace("write "+name, err)
	}
	return syncDir(filepath.Dir(name))
}

// Close implements Store.
func (s *DirStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.logFile != nil {
		err := s.logFile.Close()
		s.logFile, s.logDay = nil, ""
		return err
	}
	return nil
}

func foldAddr(s string) string { return strings.ToLower(s) }

func sameAddr(a, b string) bool { return strings.EqualFold(a, b) }
