package spool

import (
	"errors"
	"io"

	"github.com/emersion/go-smtp"
)

// Intake is a message the SMTP front hands to the spool: from a
// [[device]], or from a client of an account with spool = true.
type Intake struct {
	Device           string // the [[device]] name; "" for a mail client
	Account, Mailbox string
	From             string   // MAIL FROM as the sender gave it; "" = null sender
	To               []string // RCPT TO
	EnvelopeFrom     string   // RepairKeep or RepairAccount; "" = keep
	HeaderFrom       string   // RepairKeep, RepairFix or RepairAccount; "" = keep
	UTF8             bool     // MAIL ... SMTPUTF8
	Body             string   // MAIL ... BODY=
}

// Accept repairs the sender as in's modes say and spools the message read
// from r. When it returns nil the message is durable: the front answers
// 250 with AcceptedText(id). Otherwise the front answers Reply(err).
func (s *Spool) Accept(in Intake, r io.Reader) (id string, err error) {
	envMode, hdrMode := in.EnvelopeFrom, in.HeaderFrom
	if envMode == "" {
		envMode = RepairKeep
	}
	if hdrMode == "" {
		hdrMode = RepairKeep
	}
	from := EnvelopeFrom(envMode, in.From, in.Mailbox)
	env := &Envelope{Device: in.Device, Account: in.Account, Mailbox: in.Mailbox,
		From: from, OrigFrom: in.From, To: in.To, UTF8: in.UTF8, Body: in.Body}
	return s.Enqueue(env, RepairHeader(r, hdrMode, from, in.Mailbox))
}

// AcceptedText is the text of the 250 for a spooled message (after the
// enhanced code 2.0.0): it names the queue id, which the delivery log and
// `mailproxy queue show` know it by.
func AcceptedText(id string) string { return "Ok: queued as " + id }

// Reply is the SMTP error for a failed Accept. A reply the message's
// reader produced (go-smtp's 552 for a message over the size limit) is
// passed on as it is.
func Reply(err error) *smtp.SMTPError {
	var se *smtp.SMTPError
	switch {
	case errors.As(err, &se):
		return se
	case errors.Is(err, ErrNoSpace):
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1},
			Message: "Insufficient system storage: the spool's disk is full; try again later"}
	case errors.Is(err, ErrTooBig):
		return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
			Message: "Message too big for the spool"}
	case errors.Is(err, ErrClosed):
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2},
			Message: "Shutting down; try again later"}
	}
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "Local error storing the message; try again later"}
}
