// Package graph sends mail through Microsoft Graph for accounts whose
// tenant has SMTP AUTH switched off (send_via = "graph").
//
// A Session takes one SMTP transaction (Mail, Rcpt, Data) like the upstream
// SMTP client does and hands it to Graph:
//
//   - the message is spooled to a private temporary file (0600, removed
//     afterwards), never held in memory, so that it can be read more than
//     once (a retry, the two passes of a split);
//   - when the base64 MIME fits Graph's 4 MB request limit, the envelope
//     names exactly the header recipients and Sent Items is wanted, it goes
//     in one POST /users/{mailbox}/sendMail;
//   - otherwise it becomes a draft created from the MIME (attachments over
//     3 MB taken out), whose recipients are set to exactly the envelope,
//     whose removed attachments are uploaded through upload sessions in
//     ranges of at most 4 MB, and which is then sent.
//
// Graph's answers become SMTP replies that tell the truth: 250 only after
// Graph accepted the message; Graph's code and message otherwise. At most
// four requests per mailbox are in flight at once (Graph's
// MailboxConcurrency), shared by every session through Limits.
package graph

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"mailproxy/internal/wait"
)

// Graph's limits and our timing, in one place.
const (
	// MaxMessageBytes is Graph's largest message (150 MB).
	MaxMessageBytes = 150 << 20
	// maxRequestBody is the largest request body we send: Graph refuses
	// requests over 4 MB with 413. Kept below 4 MiB for the JSON and
	// header overhead.
	maxRequestBody = 4_000_000
	// attachmentThreshold: attachments larger than this (decoded) leave
	// the draft's MIME and go through upload sessions, as Graph asks for
	// attachments over 3 MB.
	attachmentThreshold = 3 << 20
	// postAttachmentMax: an attachment taken out only so that the draft
	// fits, up to this size, goes in one POST (its base64 and the JSON
	// stay under maxRequestBody); larger ones use an upload session.
	postAttachmentMax = 2_900_000
	// uploadChunk is the size of one upload session range: at most 4 MB,
	// and a multiple of 320 KiB as Graph recommends.
	uploadChunk = 12 * 320 << 10
	// Concurrency is how many requests per mailbox may be in flight
	// (Graph's MailboxConcurrency).
	Concurrency = 4
	// maxRecipients is Exchange Online's recipient limit per message.
	maxRecipients = 500

	// requestTimeout bounds one small request (create, patch, send).
	requestTimeout = 2 * time.Minute
	// chunkTimeout bounds one upload range.
	chunkTimeout = 3 * time.Minute
	// maxThrottleWait is the most a message waits in all for Retry-After
	// answers before it is given back to the client with 451.
	maxThrottleWait = 2 * time.Minute
	// defaultRetryAfter is the wait when a 429/503/504 names none.
	defaultRetryAfter = 5 * time.Second
	// maxAttempts bounds the attempts of one request (throttling and
	// transport errors); maxChunkAttempts those of one upload range.
	maxAttempts      = 6
	maxChunkAttempts = 5
	// cleanupTimeout bounds deleting a draft that could not be sent.
	cleanupTimeout = 30 * time.Second
)

// TokenSource hands out Graph access tokens for one account. Refresh is
// called with a token Graph refused; it returns another one (forcing a
// refresh when rejected is still the current token). Errors may answer
// NeedsSignIn() and Hint() (oauth's do).
type TokenSource interface {
	Token(ctx context.Context) (string, error)
	Refresh(ctx context.Context, rejected string) (string, error)
}

// Options configure a Sender. The zero value of each field means what its
// comment says.
type Options struct {
	// BaseURL is the Graph endpoint of the account's cloud, e.g.
	// "https://graph.microsoft.com"; "" means that one.
	BaseURL string
	// HTTPClient sends the requests; nil means http.DefaultClient. Build
	// it with the provider's roots (ca_file).
	HTTPClient *http.Client
	// KeepSentItems: false means the sent message is not saved to the
	// mailbox's Sent Items (the draft is marked delete-after-submit).
	// NewSender's callers pass the config's save_to_sent_items, default
	// true.
	KeepSentItems bool
	// TempDir holds the spooled messages; "" means os.TempDir().
	TempDir string
	// Limits is shared by every Sender of the process so that the
	// per-mailbox cap holds across accounts and sessions; nil means a
	// Limits of the Sender's own.
	Limits *Limits
	// MaxMessageBytes caps a message; 0 means MaxMessageBytes.
	MaxMessageBytes int64
	// Username names the account in sign-in hints ("" means the mailbox).
	Username string
	// Logger; nil discards.
	Logger *slog.Logger
	// Sleep waits for a Retry-After; nil means a timer honouring ctx.
	// Tests replace it.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Sender sends the messages of one mailbox through Graph. It is safe for
// concurrent use; each SMTP transaction uses a Session of its own.
type Sender struct {
	opts    Options
	mailbox string
	tokens  TokenSource
	log     *slog.Logger
}

// NewSender returns a Sender for mailbox (the /users/{mailbox} path: the
// account's own address, or a shared mailbox it may send as).
func NewSender(mailbox string, tokens TokenSource, opts Options) *Sender {
	if opts.BaseURL == "" {
		opts.BaseURL = "https://graph.microsoft.com"
	}
	opts.BaseURL = strings.TrimRight(opts.BaseURL, "/")
	if opts.HTTPClient == nil {
		opts.HTTPClient = http.DefaultClient
	}
	if opts.TempDir == "" {
		opts.TempDir = os.TempDir()
	}
	if opts.Limits == nil {
		opts.Limits = NewLimits(Concurrency)
	}
	if opts.MaxMessageBytes <= 0 || opts.MaxMessageBytes > MaxMessageBytes {
		opts.MaxMessageBytes = MaxMessageBytes
	}
	if opts.Username == "" {
		opts.Username = mailbox
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Sleep == nil {
		opts.Sleep = wait.Sleep
	}
	return &Sender{opts: opts, mailbox: mailbox, tokens: tokens, log: opts.Logger.With("mailbox", mailbox, "via", "graph")}
}

// Limits caps the requests in flight per mailbox. The zero value is not
// usable; call NewLimits.
type Limits struct {
	n  int
	mu sync.Mutex // protects m
	m  map[string]*mailboxSlots
}

type mailboxSlots struct {
	slots chan struct{}
	users int // sessions holding or waiting for a slot; the entry goes at 0
}

// NewLimits returns Limits allowing n requests per mailbox (n <= 0: Concurrency).
func NewLimits(n int) *Limits {
	if n <= 0 {
		n = Concurrency
	}
	return &Limits{n: n, m: map[string]*mailboxSlots{}}
}

// acquire waits for a slot of mailbox; release gives it back.
func (l *Limits) acquire(ctx context.Context, mailbox string) (release func(), err error) {
	key := strings.ToLower(mailbox)
	l.mu.Lock()
	s := l.m[key]
	if s == nil {
		s = &mailboxSlots{slots: make(chan struct{}, l.n)}
		l.m[key] = s
	}
	s.users++
	l.mu.Unlock()
	done := func() {
		l.mu.Lock()
		s.users--
		if s.users == 0 {
			delete(l.m, key)
		}
		l.mu.Unlock()
	}
	select {
	case s.slots <- struct{}{}:
		return func() { <-s.slots; done() }, nil
	case <-ctx.Done():
		done()
		return nil, ctx.Err()
	}
}

// errors used inside the package.
var (
	errTooLarge     = errors.New("message too large")
	errClientData   = errors.New("the message data broke off")
	errLocalStorage = errors.New("no room for the message")
)
