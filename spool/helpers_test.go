package spool

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// fakeClock is a Clock that moves only when the test says so.
type fakeClock struct {
	mu      sync.Mutex // protects now, timers
	now     time.Time
	timers  []*fakeTimer
	created chan struct{} // one send per NewTimer
}

type fakeTimer struct {
	c     *fakeClock
	at    time.Time
	ch    chan time.Time
	fired bool
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC), created: make(chan struct{}, 1<<16)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	t := &fakeTimer{c: c, at: c.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.fired = true
		t.ch <- c.now
	} else {
		c.timers = append(c.timers, t)
	}
	c.mu.Unlock()
	c.created <- struct{}{}
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	i := slices.Index(t.c.timers, t)
	if i < 0 {
		return false
	}
	t.c.timers = slices.Delete(t.c.timers, i, i+1)
	return true
}

// Advance moves the clock and fires the timers that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.fireLocked()
}

func (c *fakeClock) fireLocked() {
	keep := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(c.now) {
			t.fired = true
			t.ch <- c.now
		} else {
			keep = append(keep, t)
		}
	}
	c.timers = keep
}

// AdvanceToNext moves the clock to the earliest pending timer and fires
// it; it returns false when none is pending.
func (c *fakeClock) AdvanceToNext() (time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.timers) == 0 {
		return 0, false
	}
	next := c.timers[0].at
	for _, t := range c.timers {
		if t.at.Before(next) {
			next = t.at
		}
	}
	d := next.Sub(c.now)
	c.now = next
	c.fireLocked()
	return d, true
}

// fakeUpstream is a scripted upstream: each step pops its next error from
// a script (nil or an empty script: success) and records what it got.
type fakeUpstream struct {
	clock Clock

	mu        sync.Mutex // protects everything below
	script    map[string][]error
	opens     int
	resets    int
	quits     int
	mails     int
	delivered []delivery
	sessions  int // open sessions

	data   chan delivery // every successful DATA, also
	opened chan struct{}
}

type delivery struct {
	from string
	to   []string
	body []byte
	at   time.Time
}

func newFakeUpstream(c Clock) *fakeUpstream {
	return &fakeUpstream{clock: c, script: map[string][]error{},
		data: make(chan delivery, 1<<16), opened: make(chan struct{}, 1<<16)}
}

// fail queues errors for a step: "open", "mail", "rcpt:<addr>", "data".
func (u *fakeUpstream) fail(step string, errs ...error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.script[step] = append(u.script[step], errs...)
}

func (u *fakeUpstream) pop(step string) error {
	s := u.script[step]
	if len(s) == 0 {
		return nil
	}
	u.script[step] = s[1:]
	return s[0]
}

func (u *fakeUpstream) Open(ctx context.Context, account string) (Submitter, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.opens++
	u.opened <- struct{}{}
	if err := u.pop("open"); err != nil {
		return nil, err
	}
	u.sessions++
	return &fakeSession{u: u}, nil
}

func (u *fakeUpstream) snapshot() (opens, resets, mails int, d []delivery) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.opens, u.resets, u.mails, slices.Clone(u.delivered)
}

type fakeSession struct {
	u      *fakeUpstream
	from   string
	to     []string
	inTx   bool
	closed bool
}

var errConnReset = errors.New("connection reset by peer")

func (s *fakeSession) Mail(from string, opts *smtp.MailOptions) error {
	s.u.mu.Lock()
	defer s.u.mu.Unlock()
	if s.closed {
		return errors.New("use of closed session")
	}
	if s.inTx {
		return &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "nested MAIL: RSET first"}
	}
	s.u.mails++
	if err := s.u.pop("mail"); err != nil {
		return err
	}
	s.from, s.to, s.inTx = from, nil, true
	return nil
}

func (s *fakeSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	s.u.mu.Lock()
	defer s.u.mu.Unlock()
	if err := s.u.pop("rcpt:" + to); err != nil {
		return err
	}
	s.to = append(s.to, to)
	return nil
}

func (s *fakeSession) Data(r io.Reader) (string, error) {
	body, err := io.ReadAll(r)
	if err != nil {
		return "", err
	}
	s.u.mu.Lock()
	defer s.u.mu.Unlock()
	if err := s.u.pop("data"); err != nil {
		return "", err
	}
	d := delivery{from: s.from, to: s.to, body: body, at: s.u.clock.Now()}
	s.u.delivered = append(s.u.delivered, d)
	s.u.data <- d
	return "2.0.0 OK <queued@fake>", nil
}

func (s *fakeSession) Reset() error {
	s.u.mu.Lock()
	defer s.u.mu.Unlock()
	s.u.resets++
	s.inTx = false
	return s.u.pop("reset")
}

func (s *fakeSession) Quit() error {
	s.u.mu.Lock()
	defer s.u.mu.Unlock()
	if !s.closed {
		s.closed = true
		s.u.quits++
		s.u.sessions--
	}
	return nil
}

func smtpErr(code int, ec smtp.EnhancedCode, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: ec, Message: msg}
}

// env is a spool test: a DirStore in a temp dir, a fake clock and upstream.
type env struct {
	t     *testing.T
	dir   string
	clock *fakeClock
	up    *fakeUpstream
	sp    *Spool
	store *DirStore
	opts  Options

	attempts chan string // ids of recorded attempts
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func newEnv(t *testing.T, mod func(*Options)) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), clock: newFakeClock()}
	e.up = newFakeUpstream(e.clock)
	e.attempts = make(chan string, 1<<16)
	e.opts = Options{Open: e.up.Open, Clock: e.clock, Logger: quietLogger(), Domain: "proxy.test",
		afterRecord: func(id string) { e.attempts <- id }}
	if mod != nil {
		mod(&e.opts)
	}
	e.open()
	return e
}

func (e *env) open() {
	e.t.Helper()
	st, err := OpenDir(e.dir)
	if err != nil {
		e.t.Fatal(err)
	}
	sp, err := New(st, e.opts)
	if err != nil {
		e.t.Fatal(err)
	}
	e.store, e.sp = st, sp
	e.t.Cleanup(func() { sp.Shutdown(context.Background()) })
}

// restart stops the spool and opens it again over the same directory.
func (e *env) restart() {
	e.t.Helper()
	if err := e.sp.Shutdown(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.open()
}

const testMailbox = "scanner@contoso.com"

func testMessage(subject string) string {
	return "From: Scanner <scanner@contoso.com>\r\nTo: bob@example.com\r\nSubject: " + subject +
		"\r\nMessage-ID: <" + strings.ReplaceAll(subject, " ", ".") + "@mfp>\r\n\r\nbody of " + subject + "\r\n.leading dot\r\n"
}

func (e *env) enqueue(from string, to []string, msg string) string {
	e.t.Helper()
	id, err := e.sp.Enqueue(&Envelope{Device: "mfp", Account: testMailbox, Mailbox: testMailbox,
		From: EnvelopeFrom(RepairAccount, from, testMailbox), OrigFrom: from, To: to}, strings.NewReader(msg))
	if err != nil {
		e.t.Fatalf("Enqueue: %v", err)
	}
	return id
}

// run lets the worker go, advancing the fake clock to the next timer
// whenever it waits on one, until cond holds after a recorded attempt.
func (e *env) run(cond func() bool) {
	e.t.Helper()
	deadline := time.After(20 * time.Second)
	for !cond() {
		select {
		case <-e.attempts:
		case <-e.clock.created:
			e.clock.AdvanceToNext()
		case <-deadline:
			e.t.Fatal("the condition did not become true")
		}
	}
}

// delivered reports whether the upstream got n messages in all.
func (e *env) delivered(n int) func() bool {
	return func() bool { _, _, _, d := e.up.snapshot(); return len(d) >= n }
}

// waitTimer waits until the worker made a timer.
func (e *env) waitTimer() {
	e.t.Helper()
	select {
	case <-e.clock.created:
	case <-time.After(20 * time.Second):
		e.t.Fatal("the worker made no timer")
	}
}

func (e *env) record(id string) *Record {
	e.t.Helper()
	r, err := e.sp.Show(id)
	if err != nil {
		e.t.Fatalf("Show(%s): %v", id, err)
	}
	return r
}
