// Package spool owns the device relay's durable queue and its delivery
// workers: a device's message is written to disk and fsynced before the
// SMTP front answers 250; one worker per mailbox then delivers it through
// a Submitter (the upstream SMTP client, or Graph), paced at the mailbox's
// rate, retried with backoff on temporary failures, bounced with a DSN on
// permanent ones, and stopped (the mailbox paused) on refusals that are
// about the mailbox rather than the message.
//
// What is stored and how is behind Store; DirStore keeps everything in one
// directory on local disk (docs/DEVICES.md describes its layout). The
// journal the store keeps is both the delivery log the admin page and
// `mailproxy queue` show and the record of what was delivered: a message
// is sent twice only if the process dies between the upstream's 250 and
// that 250 reaching the journal.
package spool

import (
	"errors"
	"io"
	"time"
)

// Envelope is what the spool keeps about a message besides its bytes.
// It never holds a body, a password or a token.
type Envelope struct {
	ID       string    `json:"id"`
	Received time.Time `json:"received"`
	Device   string    `json:"device,omitempty"`   // the [[device]] name; "" for a mail client
	Account  string    `json:"account"`            // the [[account]] whose tokens send it
	Mailbox  string    `json:"mailbox"`            // the sending mailbox: pacing and pausing are per mailbox
	From     string    `json:"from"`               // MAIL FROM sent upstream
	OrigFrom string    `json:"orig_from"`          // MAIL FROM the device gave; "" = null sender
	To       []string  `json:"to"`                 // RCPT TO, in order
	UTF8     bool      `json:"smtputf8,omitempty"` // MAIL ... SMTPUTF8
	Body     string    `json:"body,omitempty"`     // MAIL ... BODY= (7BIT, 8BITMIME)
	// IsDSN marks a delivery status notification the spool made: one that
	// fails is logged, never answered with another.
	IsDSN bool `json:"is_dsn,omitempty"`
}

// Rewritten reports whether MAIL FROM differs from what the device gave.
func (e *Envelope) Rewritten() bool { return !sameAddr(e.From, e.OrigFrom) }

// Event kinds in the journal.
const (
	EvReceived = "received" // accepted into the spool (the 250)
	EvAttempt  = "attempt"  // one delivery attempt and its outcome per recipient
	EvDSN      = "dsn"      // a DSN was queued for failed recipients
	EvDone     = "done"     // the message left the queue
	EvRetry    = "retry"    // an admin asked for a retry now
)

// Results of EvDone.
const (
	ResultDelivered = "delivered" // every recipient accepted
	ResultBounced   = "bounced"   // every recipient failed
	ResultPartial   = "partial"   // some delivered, some failed
	ResultDeleted   = "deleted"   // removed by an admin
)

// Event is one line of the journal.
type Event struct {
	Time time.Time `json:"t"`
	ID   string    `json:"id"`
	Kind string    `json:"ev"`

	// EvReceived
	Device   string `json:"device,omitempty"`
	Account  string `json:"account,omitempty"`
	Mailbox  string `json:"mailbox,omitempty"`
	From     string `json:"from,omitempty"`
	OrigFrom string `json:"orig_from,omitempty"`
	Rcpts    int    `json:"rcpts,omitempty"`
	Size     int64  `json:"size,omitempty"`
	IsDSN    bool   `json:"is_dsn,omitempty"`

	// EvAttempt: the recipients of each outcome and the upstream's reply
	// verbatim (the last one that decided them).
	Delivered []string  `json:"delivered,omitempty"`
	Failed    []string  `json:"failed,omitempty"`
	Deferred  []string  `json:"deferred,omitempty"`
	Reply     string    `json:"reply,omitempty"`
	Next      time.Time `json:"next,omitzero"`

	// EvDSN: the queue id of the DSN and where it went.
	DSN   string `json:"dsn,omitempty"`
	DSNTo string `json:"dsn_to,omitempty"`

	// EvDone
	Result string `json:"result,omitempty"`
}

// Pause is a mailbox's stopped queue.
type Pause struct {
	Mailbox string    `json:"mailbox"`
	Since   time.Time `json:"since"`
	Reason  string    `json:"reason"` // the upstream reply that stopped it
}

// Store keeps queued messages, the journal and the paused mailboxes.
// DirStore is the embedded one; a shared store for several instances
// implements the same methods. Every method is safe for concurrent use.
type Store interface {
	// Put stores a message read from r, at most max bytes. When it
	// returns nil the message survives a crash of the process or the
	// machine. On an error nothing of it remains; a full disk is
	// reported as an error that errors.Is ErrNoSpace.
	Put(env *Envelope, r io.Reader, max int64) (size int64, err error)
	// Open returns the bytes of a queued message.
	Open(id string) (io.ReadCloser, error)
	// Remove drops a message from the queue. Its journal stays.
	Remove(id string) error
	// Queued returns the envelopes of every queued message.
	Queued() ([]*Envelope, error)

	// Append writes events to the journal; with sync they are durable
	// when it returns.
	Append(sync bool, evs ...Event) error
	// Events calls fn for each journal event at or after since, oldest
	// first, until fn returns false.
	Events(since time.Time, fn func(Event) bool) error
	// Prune drops journal entries older than before.
	Prune(before time.Time) error

	// SetPaused records a mailbox's pause (p != nil) or its resumption.
	SetPaused(mailbox string, p *Pause) error
	// Paused returns every paused mailbox.
	Paused() ([]Pause, error)

	Close() error
}

// Errors of the spool that the front maps to replies.
var (
	// ErrNoSpace: the disk is full; the front answers 452 4.3.1.
	ErrNoSpace = errors.New("spool: no space left")
	// ErrTooBig: the message is larger than allowed; 552 5.3.4.
	ErrTooBig = errors.New("spool: message too big")
	// ErrNotFound: no queued message or mailbox has that name.
	ErrNotFound = errors.New("spool: not found")
	// ErrClosed: the spool is shut down; 421 4.3.2.
	ErrClosed = errors.New("spool: closed")
	// ErrSenderData: reading the message from the sender failed (its
	// connection broke, or the SMTP server's reader refused it); nothing
	// was queued.
	ErrSenderData = errors.New("reading the message failed")
)
