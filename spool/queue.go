package spool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Options, the same as the config's.
const (
	DefaultRate            = 30 // messages per minute per mailbox (Exchange Online's limit)
	DefaultDailyRecipients = 10000
	DefaultRetry           = time.Minute
	DefaultMaxRetry        = time.Hour
	DefaultMaxAge          = 120 * time.Hour
	DefaultLogRetention    = 720 * time.Hour

	// idleQuit: a session with nothing due for this long is closed rather
	// than left for the upstream to time out.
	idleQuit = time.Minute
	// maxHeaderCopy bounds the original header a DSN quotes.
	maxHeaderCopy = 64 << 10
)

// Options configure a Spool. Zero values take the defaults above.
type Options struct {
	// Open opens upstream sessions; required.
	Open Opener
	// Rate is the number of messages per minute sent per mailbox.
	Rate int
	// DailyRecipients caps recipients per mailbox in any 24 hours.
	DailyRecipients int
	// Retry is the first retry delay; it doubles up to MaxRetry.
	Retry, MaxRetry time.Duration
	// MaxAge: a message undelivered for this long bounces.
	MaxAge time.Duration
	// LogRetention: journal days older than this are dropped.
	LogRetention time.Duration
	// MaxMessageBytes bounds a message at intake; 0 = no bound.
	MaxMessageBytes int64
	// Domain names this host in DSNs (Reporting-MTA); default "localhost".
	Domain string
	// Clock; nil = the system clock.
	Clock Clock
	// Logger; nil = slog.Default().
	Logger *slog.Logger
	// OnPause, if set, is called (without locks held) when a mailbox
	// pauses, for alerts.
	OnPause func(Pause)

	// afterUpstream runs after the upstream accepted a message and before
	// the journal records it (tests: a crash there).
	afterUpstream func(id string)
	// afterRecord runs when an attempt is fully recorded (tests: sync).
	afterRecord func(id string)
}

// Spool is the queue and its workers. Its methods are safe for concurrent
// use.
type Spool struct {
	store Store
	o     Options
	log   *slog.Logger

	ctx    context.Context // workers' lifetime; set by Start
	cancel context.CancelFunc
	wg     sync.WaitGroup

	seq atomic.Uint64 // arrival order of items

	mu      sync.Mutex // protects workers, started, closed
	workers map[string]*worker
	started bool
	closed  bool
}

// New opens a spool over store: it reads what is queued and the journal,
// drops what the journal says is done (a crash between the two), and
// restores each message's remaining recipients and retry count. Workers
// start with Start.
func New(store Store, o Options) (*Spool, error) {
	if o.Open == nil {
		return nil, errors.New("spool: Options.Open is required")
	}
	if o.Rate <= 0 {
		o.Rate = DefaultRate
	}
	if o.DailyRecipients <= 0 {
		o.DailyRecipients = DefaultDailyRecipients
	}
	if o.Retry <= 0 {
		o.Retry = DefaultRetry
	}
	if o.MaxRetry <= 0 {
		o.MaxRetry = DefaultMaxRetry
	}
	if o.MaxRetry < o.Retry {
		o.MaxRetry = o.Retry
	}
	if o.MaxAge <= 0 {
		o.MaxAge = DefaultMaxAge
	}
	if o.LogRetention <= 0 {
		o.LogRetention = DefaultLogRetention
	}
	if o.Domain == "" {
		o.Domain = "localhost"
	}
	if o.Clock == nil {
		o.Clock = SystemClock{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Spool{store: store, o: o, log: o.Logger, workers: map[string]*worker{}}
	if err := s.recover(); err != nil {
		return nil, err
	}
	return s, nil
}

// recover rebuilds the in-memory queue from the store.
func (s *Spool) recover() error {
	envs, err := s.store.Queued()
	if err != nil {
		// Unreadable files are logged and left where they are for an
		// admin; the readable ones are served.
		s.log.Error("spool: some queued files cannot be read", "err", err)
	}
	now := s.o.Clock.Now()
	paused, err := s.store.Paused()
	if err != nil {
		return err
	}
	for _, p := range paused {
		w := s.workerLocked(p.Mailbox)
		p := p
		w.paused = &p
	}
	if len(envs) == 0 {
		return s.store.Prune(now.Add(-s.o.LogRetention))
	}
	items := make(map[string]*item, len(envs))
	since := envs[0].Received
	for _, e := range envs {
		items[e.ID] = &item{env: e, remaining: slices.Clone(e.To)}
		since = minTime(since, e.Received)
	}
	seen := map[string]bool{}
	err = s.store.Events(since.Add(-time.Minute), func(ev Event) bool {
		it := items[ev.ID]
		if it == nil {
			return true
		}
		switch ev.Kind {
		case EvReceived:
			seen[ev.ID] = true
		case EvAttempt:
			it.attempts++
			it.remaining = without(it.remaining, ev.Delivered, ev.Failed)
			it.delivered += len(ev.Delivered)
			it.failed += len(ev.Failed)
			if len(ev.Deferred) > 0 {
				it.next = ev.Next
			}
		case EvDone:
			it.done = true
		}
		return true
	})
	if err != nil {
		return err
	}
	var missing []Event
	for _, e := range envs {
		it := items[e.ID]
		if it.done || len(it.remaining) == 0 {
			// Delivered (or bounced) and recorded, but not yet removed.
			if !it.done {
				s.store.Append(true, Event{Time: now, ID: e.ID, Kind: EvDone, Result: it.result()})
			}
			s.store.Remove(e.ID)
			continue
		}
		if !seen[e.ID] {
			missing = append(missing, receivedEvent(e, s.size(e.ID)))
		}
		it.seq = s.seq.Add(1)
		s.workerLocked(e.Mailbox).items[e.ID] = it
	}
	if len(missing) > 0 {
		s.store.Append(false, missing...)
	}
	s.log.Info("spool: recovered", "queued", len(envs), "mailboxes", len(s.workers))
	return s.store.Prune(now.Add(-s.o.LogRetention))
}

func (s *Spool) size(id string) int64 {
	rc, err := s.store.Open(id)
	if err != nil {
		return 0
	}
	defer rc.Close()
	n, _ := io.Copy(io.Discard, rc)
	return n
}

func receivedEvent(e *Envelope, size int64) Event {
	return Event{
		Time: e.Received, ID: e.ID, Kind: EvReceived,
		Device: e.Device, Account: e.Account, Mailbox: e.Mailbox,
		From: e.From, OrigFrom: e.OrigFrom, Rcpts: len(e.To), Size: size, IsDSN: e.IsDSN,
	}
}

// without returns list minus the addresses in the other lists.
func without(list []string, drop ...[]string) []string {
	out := list[:0:0]
	for _, a := range list {
		keep := true
		for _, d := range drop {
			if slices.ContainsFunc(d, func(b string) bool { return sameAddr(a, b) }) {
				keep = false
				break
			}
		}
		if keep {
			out = append(out, a)
		}
	}
	return out
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// workerLocked returns the worker of a mailbox, making it if needed.
// Called with s.mu held, or before Start.
func (s *Spool) workerLocked(mailbox string) *worker {
	k := foldAddr(mailbox)
	w := s.workers[k]
	if w == nil {
		w = &worker{s: s, mailbox: mailbox, items: map[string]*item{}, wake: make(chan struct{}, 1)}
		s.workers[k] = w
		if s.started && !s.closed {
			s.startWorker(w)
		}
	}
	return w
}

func (s *Spool) startWorker(w *worker) {
	// A poke from before the start means nothing: the first pick looks
	// at everything.
	select {
	case <-w.wake:
	default:
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		w.run(s.ctx)
	}()
}

// Start starts the delivery workers.
func (s *Spool) Start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.closed {
		return
	}
	s.started = true
	s.ctx, s.cancel = context.WithCancel(context.Background())
	for _, w := range s.workers {
		s.startWorker(w)
	}
}

// Shutdown stops the workers after the attempts in flight (bounded by
// ctx) and closes the store. Queued messages stay for the next start.
func (s *Spool) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	if s.cancel != nil {
		s.cancel()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("spool shutdown: %w", ctx.Err())
	}
	return s.store.Close()
}

// NewID returns a new queue id: the UTC time, so ids sort by arrival,
// and 48 random bits.
func NewID(now time.Time) string {
	var b [6]byte
	rand.Read(b[:])
	return now.UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b[:])
}

// Enqueue stores a message read from r and queues it for delivery. env's
// ID and Received are set here. When Enqueue returns nil the message is
// on disk (fsynced) and may be acknowledged with its id. Errors: ErrNoSpace
// (452), ErrTooBig (552), ErrClosed (421), or the reader's.
func (s *Spool) Enqueue(env *Envelope, r io.Reader) (string, error) {
	if len(env.To) == 0 {
		return "", errors.New("spool: a message needs a recipient")
	}
	if env.Mailbox == "" || env.Account == "" {
		return "", errors.New("spool: a message needs an account and a mailbox")
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return "", ErrClosed
	}
	now := s.o.Clock.Now()
	env.ID, env.Received = NewID(now), now
	size, err := s.store.Put(env, r, s.o.MaxMessageBytes)
	if err != nil {
		return "", err
	}
	// The queue file is the record; this line only feeds the log, so it
	// is not fsynced (recovery writes it again if it is lost).
	if err := s.store.Append(false, receivedEvent(env, size)); err != nil {
		s.log.Warn("spool: journal", "id", env.ID, "err", err)
	}
	s.mu.Lock()
	w := s.workerLocked(env.Mailbox)
	s.mu.Unlock()
	w.add(&item{env: env, remaining: slices.Clone(env.To), next: now})
	return env.ID, nil
}

// ---- admin ----

// MailboxStatus is one mailbox's queue, for the page, status and metrics.
type MailboxStatus struct {
	Mailbox   string
	Depth     int       // queued messages
	Oldest    time.Time // received time of the oldest; zero when empty
	Paused    *Pause
	Delivered uint64 // messages since start
	Deferred  uint64 // attempts that ended in a retry
	Bounced   uint64 // messages (or recipients' parts) that failed for good
}

// Status returns every mailbox that has a queue, a pause or counts.
func (s *Spool) Status() []MailboxStatus {
	s.mu.Lock()
	ws := make([]*worker, 0, len(s.workers))
	for _, w := range s.workers {
		ws = append(ws, w)
	}
	s.mu.Unlock()
	out := make([]MailboxStatus, 0, len(ws))
	for _, w := range ws {
		out = append(out, w.status())
	}
	slices.SortFunc(out, func(a, b MailboxStatus) int { return strings.Compare(a.Mailbox, b.Mailbox) })
	return out
}

func (s *Spool) findItem(id string) (*worker, *item) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.workers {
		w.mu.Lock()
		it := w.items[id]
		w.mu.Unlock()
		if it != nil {
			return w, it
		}
	}
	return nil, nil
}

// Retry makes a queued message due now (and its mailbox's pacing still
// applies). It does not resume a paused mailbox.
func (s *Spool) Retry(id string) error {
	w, it := s.findItem(id)
	if it == nil {
		return fmt.Errorf("retry %s: %w", id, ErrNotFound)
	}
	now := s.o.Clock.Now()
	s.store.Append(false, Event{Time: now, ID: id, Kind: EvRetry})
	w.mu.Lock()
	it.next = now
	w.mu.Unlock()
	w.poke()
	return nil
}

// Delete removes a queued message without delivering it; no DSN is sent.
// A message in the middle of an attempt is removed when the attempt ends.
func (s *Spool) Delete(id string) error {
	w, it := s.findItem(id)
	if it == nil {
		return fmt.Errorf("delete %s: %w", id, ErrNotFound)
	}
	w.mu.Lock()
	it.deleted = true
	busy := w.current == it
	if !busy {
		delete(w.items, id)
	}
	w.mu.Unlock()
	if !busy {
		return s.finish(it, ResultDeleted)
	}
	return nil
}

// finish records a message as done and removes it from the store.
func (s *Spool) finish(it *item, result string, evs ...Event) error {
	evs = append(evs, Event{Time: s.o.Clock.Now(), ID: it.env.ID, Kind: EvDone, Result: result})
	if err := s.store.Append(true, evs...); err != nil {
		return err
	}
	if err := s.store.Remove(it.env.ID); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	return nil
}

// Pause stops a mailbox's deliveries until Resume.
func (s *Spool) Pause(mailbox, reason string) error {
	s.mu.Lock()
	w := s.workerLocked(mailbox)
	s.mu.Unlock()
	return w.pause(reason)
}

// Resume restarts a paused mailbox (an admin, or a `check` of the account
// that succeeded); its messages are due at once.
func (s *Spool) Resume(mailbox string) error {
	s.mu.Lock()
	w := s.workers[foldAddr(mailbox)]
	s.mu.Unlock()
	if w == nil {
		return fmt.Errorf("resume %s: %w", mailbox, ErrNotFound)
	}
	return w.resume()
}
