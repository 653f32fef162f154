package imap

import (
	"bytes"
	"io"
	"strconv"
	"strings"
)

// The protocol trace (Server.Trace). It is written from what the session
// parsed, not from the raw bytes, so that what must not be logged is left
// out rather than filtered: a password, a SASL response, an access token.

// redacted stands for a credential in the trace.
const redacted = "<redacted>"

// Directions of traced lines.
const (
	dirFromClient   = "client->proxy"
	dirToClient     = "proxy->client"
	dirToUpstream   = "proxy->upstream"
	dirFromUpstream = "upstream->proxy"
)

// traceLine logs one line; it does nothing when tracing is off.
func (c *session) traceLine(dir, line string) {
	if c.trace == nil {
		return
	}
	if len(line) > traceMaxLine {
		line = line[:traceMaxLine] + "... (" + strconv.Itoa(len(line)) + " bytes)"
	}
	c.trace.Debug("imap trace", "dir", dir, "line", line)
}

// traceLines logs b, split into lines without their endings.
func (c *session) traceLines(dir string, b []byte) {
	for len(b) > 0 {
		line, rest, _ := bytes.Cut(b, []byte("\n"))
		c.traceLine(dir, string(bytes.TrimSuffix(line, []byte("\r"))))
		b = rest
	}
}

// traceUpstream logs a response of the upstream during login. It should
// never repeat what we sent, but if it did, the token would not reach the
// trace.
func (c *session) traceUpstream(resp []byte, secrets ...string) {
	text := string(resp)
	for _, s := range secrets {
		if s != "" {
			text = strings.ReplaceAll(text, s, redacted)
		}
	}
	c.traceLines(dirFromUpstream, []byte(text))
}

// traced wraps w, the client connection, so that what the session writes to
// it is traced; without tracing it returns w.
func (c *session) traced(w io.Writer) io.Writer {
	if c.trace == nil {
		return w
	}
	return traceWriter{w: w, c: c}
}

// traceWriter traces the replies the session writes to the client. They
// hold no credentials: the session only ever writes its own replies, SASL
// challenges and the upstream's answer to the login.
type traceWriter struct {
	w io.Writer
	c *session
}

func (t traceWriter) Write(b []byte) (int, error) {
	n, err := t.w.Write(b)
	t.c.traceLines(dirToClient, b[:n])
	return n, err
}

// traceCommand logs the command the parser holds, or the malformed one
// that ce describes. Arguments are shown only where they are known to hold
// no credential: the LOGIN user name, the AUTHENTICATE mechanism, the ID
// fields. Any other command shows only how many arguments it had, since a
// confused client may send a password anywhere.
func (c *session) traceCommand(ce *commandError) {
	p := &c.p
	var b strings.Builder
	if tag := p.bytes(p.tag); len(tag) > 0 {
		b.Write(tag)
	} else {
		b.WriteString("(no tag)")
	}
	if ce != nil {
		b.WriteString(" (malformed: " + ce.msg + ")")
		c.traceLine(dirFromClient, b.String())
		return
	}
	name := string(p.bytes(p.name))
	b.WriteString(" " + name)
	args := p.args
	switch {
	case len(args) == 0:
	case name == "LOGIN" && len(args) == 2:
		b.WriteString(" ")
		c.traceArg(&b, args[0])
		b.WriteString(" " + redacted)
	case name == "AUTHENTICATE" && args[0].kind == argAtom:
		b.WriteString(" ")
		c.traceArg(&b, args[0])
		if len(args) > 1 {
			b.WriteString(" " + redacted)
		}
	case name == "ID":
		for _, a := range args {
			b.WriteString(" ")
			c.traceArg(&b, a)
		}
	default:
		b.WriteString(" (" + strconv.Itoa(len(args)) + " arguments not shown)")
	}
	c.traceLine(dirFromClient, b.String())
}

// traceArg writes an argument: atoms and parentheses as they are, strings
// (quoted or literal) quoted.
func (c *session) traceArg(b *strings.Builder, a arg) {
	v := c.p.bytes(a.span)
	if a.kind != argString {
		b.Write(v)
		return
	}
	b.WriteByte('"')
	for _, ch := range v {
		if ch == '"' || ch == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(ch)
	}
	b.WriteByte('"')
}
