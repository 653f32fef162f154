package spool

import (
	"errors"
	"io"
	"slices"

	"github.com/emersion/go-smtp"
)

// Session is the spool seen from the SMTP front: a Submitter whose Data
// spools the message and answers with its queue id, so that the front's
// one DATA path serves devices (and accounts with spool = true) as it
// serves the upstream. One transaction at a time, like any Submitter.
type Session struct {
	sp  *Spool
	in  Intake // Device, Account, Mailbox and the repair modes; From/To per transaction
	txn bool
}

var _ Submitter = (*Session)(nil)

// NewSession returns a Submitter that spools for the sender tmpl
// describes: Device, Account, Mailbox, EnvelopeFrom and HeaderFrom are
// taken from it.
func (s *Spool) NewSession(tmpl Intake) *Session {
	tmpl.From, tmpl.To = "", nil
	return &Session{sp: s, in: tmpl}
}

var errNoMail = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "MAIL first"}

// Mail implements Submitter.
func (c *Session) Mail(from string, opts *smtp.MailOptions) error {
	if c.txn {
		return &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "Nested MAIL command"}
	}
	c.in.From, c.in.To, c.txn = from, nil, true
	c.in.UTF8, c.in.Body = false, ""
	if opts != nil {
		c.in.UTF8, c.in.Body = opts.UTF8, string(opts.Body)
	}
	return nil
}

// Rcpt implements Submitter. DSN options (NOTIFY, ORCPT) are not kept:
// the spool's own DSNs follow the rules in docs/DEVICES.md.
func (c *Session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if !c.txn {
		return errNoMail
	}
	c.in.To = append(c.in.To, to)
	return nil
}

// Data implements Submitter: the reply is "2.0.0 Ok: queued as <id>" once
// the message is on disk. A sender whose data broke off gets the read
// error back (nothing was queued); a local failure is the
// *smtp.SMTPError of Reply (452 for a full disk).
func (c *Session) Data(r io.Reader) (string, error) {
	if !c.txn || len(c.in.To) == 0 {
		io.Copy(io.Discard, r)
		return "", errNoMail
	}
	in := c.in
	in.To = slices.Clone(c.in.To)
	c.txn = false
	id, err := c.sp.Accept(in, r)
	if err != nil {
		if errors.Is(err, ErrSenderData) {
			var se *smtp.SMTPError
			if errors.As(err, &se) {
				return "", se
			}
			return "", err
		}
		return "", Reply(err)
	}
	return "2.0.0 " + AcceptedText(id), nil
}

// Reset implements Submitter.
func (c *Session) Reset() error {
	c.txn, c.in.From, c.in.To = false, "", nil
	return nil
}

// Quit implements Submitter.
func (c *Session) Quit() error { return c.Reset() }
