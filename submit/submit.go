// Package submit is the seam between what takes a message in (the SMTP
// front, the spool's delivery workers) and what hands it to the provider
// (the upstream SMTP client in smtpclient; Microsoft Graph; the spool
// itself, seen from the front). It holds the one interface both sides
// agree on and the few rules of SMTP replies they share, and imports
// nothing of ours, so that every side can import it without a cycle.
package submit

import (
	"context"
	"io"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
)

// Submitter is one authenticated session with whatever delivers mail
// upstream. Its methods map one to one onto the SMTP commands of a mail
// transaction and are called from one goroutine at a time.
//
// Errors the upstream answered are *smtp.SMTPError with the upstream's
// code, enhanced code and text, so that a front can pass them on as they
// are. Any other error is a network or local failure, after which the
// session is unusable: the caller drops it (Close, if it has one).
type Submitter interface {
	// Mail starts a transaction. opts are passed on as far as the
	// upstream supports them; an option it cannot carry (SMTPUTF8 to a
	// server without it) is refused with the *smtp.SMTPError a server
	// would give.
	Mail(from string, opts *smtp.MailOptions) error
	// Rcpt adds a recipient with its DSN options.
	Rcpt(to string, opts *smtp.RcptOptions) error
	// Data sends the message read from r, and returns the upstream's
	// reply text once it accepted it ("2.0.0 OK <id> Queued"). When r
	// fails (the client's data broke off) nothing is submitted: the
	// message is dropped with the connection, never finished. Whatever
	// the outcome, the transaction is over when Data returns.
	Data(r io.Reader) (reply string, err error)
	// Reset abandons the open transaction.
	Reset() error
	// Quit ends the session politely and releases it.
	Quit() error
}

// A Submitter that is also an io.Closer is closed by the front without
// another command when the session must end at once (Close of the server,
// a client that left mid-command): a message in flight is then not
// delivered, so the client will send it again.

// Opener opens an authenticated Submitter for identity (the XOAUTH2
// user=, or Graph's mailbox) with an access token. ctx bounds the opening
// and, until Open returns, cancelling it cuts the connection. A refused
// token is an *smtp.SMTPError 535 whose enhanced code is not 5.7.139
// (that one means SMTP AUTH is switched off for the mailbox), so that the
// caller refreshes the token once and tries again.
type Opener func(ctx context.Context, identity, token string) (Submitter, error)

// ParseStatus splits a reply text like "2.0.0 OK <id> Queued" into its
// enhanced code and the rest; without one the code is
// smtp.EnhancedCodeNotSet and the text is returned whole.
func ParseStatus(text string) (smtp.EnhancedCode, string) {
	code, rest, _ := strings.Cut(text, " ")
	parts := strings.Split(code, ".")
	if len(parts) != 3 {
		return smtp.EnhancedCodeNotSet, text
	}
	var ec smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 999 {
			return smtp.EnhancedCodeNotSet, text
		}
		ec[i] = n
	}
	return ec, rest
}

// OneLine joins a multi-line reply text and replaces control characters
// with spaces: what may go into one reply line or one log attribute.
func OneLine(s string) string {
	return strings.TrimSpace(strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s))
}

// Truncate cuts s to n bytes, marking the cut.
func Truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
