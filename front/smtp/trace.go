package smtp

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
)

// The protocol trace (Server.Trace) is written where the commands arrive:
// in the session methods, which see each command go-smtp parsed and the
// reply they return. Credentials never reach it: AUTH responses are
// "<redacted>", message data shows as its size. What go-smtp answers on
// its own (EHLO's extensions, syntax errors, 354) is not traced; the
// upstream side is traced command by command by smtpclient.

// Trace directions.
const (
	dirClientIn  = "client->proxy"
	dirClientOut = "proxy->client"
)

const redacted = "<redacted>"

// note writes one trace line of the connection, when tracing.
func (c *conn) note(dir, line string) {
	if c.trace != nil {
		c.trace.Debug("smtp trace", "dir", dir, "line", line)
	}
}

func (s *session) traceIn(line string)  { s.c.note(dirClientIn, line) }
func (s *session) traceOut(line string) { s.c.note(dirClientOut, line) }

// traceReply traces the reply a session method returns: its code and text
// for an *smtp.SMTPError, a bare 250 where go-smtp writes its own text.
func (s *session) traceReply(err error) {
	if s.c.trace == nil {
		return
	}
	var se *smtp.SMTPError
	switch {
	case err == nil:
		s.traceOut("250")
	case errors.As(err, &se):
		line := strconv.Itoa(se.Code)
		if ec := se.EnhancedCode; ec != smtp.EnhancedCodeNotSet && ec != smtp.NoEnhancedCode {
			line += fmt.Sprintf(" %d.%d.%d", ec[0], ec[1], ec[2])
		}
		s.traceOut(line + " " + se.Message)
	default:
		s.traceOut("<error: " + err.Error() + ">")
	}
}

// mailLine is the MAIL command as go-smtp parsed it.
func mailLine(from string, opts *smtp.MailOptions) string {
	var b strings.Builder
	b.WriteString("MAIL FROM:<" + from + ">")
	if opts == nil {
		return b.String()
	}
	if opts.Body != "" {
		b.WriteString(" BODY=" + string(opts.Body))
	}
	if opts.Size > 0 {
		b.WriteString(" SIZE=" + strconv.FormatInt(opts.Size, 10))
	}
	if opts.UTF8 {
		b.WriteString(" SMTPUTF8")
	}
	if opts.Return != "" {
		b.WriteString(" RET=" + string(opts.Return))
	}
	if opts.EnvelopeID != "" {
		b.WriteString(" ENVID=" + opts.EnvelopeID)
	}
	if opts.Auth != nil {
		b.WriteString(" AUTH=<" + *opts.Auth + ">")
	}
	return b.String()
}

// rcptLine is the RCPT command as go-smtp parsed it.
func rcptLine(to string, opts *smtp.RcptOptions) string {
	var b strings.Builder
	b.WriteString("RCPT TO:<" + to + ">")
	if opts == nil {
		return b.String()
	}
	for i, n := range opts.Notify {
		if i == 0 {
			b.WriteString(" NOTIFY=")
		} else {
			b.WriteString(",")
		}
		b.WriteString(string(n))
	}
	if opts.OriginalRecipient != "" {
		b.WriteString(" ORCPT=" + string(opts.OriginalRecipientType) + ";" + opts.OriginalRecipient)
	}
	return b.String()
}
