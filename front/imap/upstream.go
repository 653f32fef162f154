package imap

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mailproxy/auth"
	"mailproxy/front"
	"mailproxy/upstream"
	"net"
	"slices"
	"strings"
	"time"
)

var errUpstreamTooLong = errors.New("upstream response too long")

type upstreamResult struct {
	up    net.Conn
	upr   *bufio.Reader
	reply []byte // the upstream's untagged data and tagged OK, for the client
	err   *auth.AuthError
}

func unavailable(msg string, err error) upstreamResult {
	return upstreamResult{err: &auth.AuthError{Kind: auth.AuthUnavailable, Msg: msg, Err: err}}
}

// openUpstream logs in to the account's upstream IMAP server with XOAUTH2
// under the client's tag, by deadline. When the upstream refuses the token it
// forces one refresh and tries again on a new connection.
func (c *session) openUpstream(deadline time.Time, tag string, g *auth.Grant, log *slog.Logger) upstreamResult {
	if g == nil || g.Tokens == nil || g.Upstream.AddrOf(Name) == "" {
		return unavailable("no IMAP server configured for this account", errors.New("grant without IMAP upstream"))
	}
	ctx, cancel := context.WithDeadline(c.Ctx, deadline)
	defer cancel()
	var res upstreamResult
	ae, reached := c.LoginUpstream(ctx, deadline, g, log, func(ctx context.Context, tok string) string {
		var refusal string
		res, refusal = c.tryUpstream(ctx, tag, g, tok)
		return refusal
	})
	if ae != nil {
		res = upstreamResult{err: ae}
	}
	if reached {
		if res.err != nil {
			front.ObserveUpstream(c.s.metrics, g.Username, Name, res.err)
		} else {
			front.ObserveUpstream(c.s.metrics, g.Username, Name, nil)
		}
	}
	return res
}

// tryUpstream makes one login attempt. A non-empty refusal is the text of
// the upstream's NO to the token; res.up is then closed.
func (c *session) tryUpstream(ctx context.Context, tag string, g *auth.Grant, tok string) (res upstreamResult, refusal string) {
	addr := g.Upstream.AddrOf(Name)
	up, r, err := c.DialUpstream(ctx, c.s.Dial, addr, g.Upstream.TLSFor(addr))
	if err != nil {
		return unavailable("cannot reach the mail server", fmt.Errorf("dial upstream %s: %w", addr, err)), ""
	}
	ok := false
	defer func() {
		if !ok {
			c.DropUpstream(up)
		}
	}()

	saslIR, res := c.upstreamGreeting(r, tok)
	if res.err != nil {
		return res, ""
	}
	mailbox := g.Mailbox // always set (auth.grantFor)
	x := &xoauth2{c: c, up: up, r: r, tag: tag, tok: tok, mailbox: mailbox,
		ir: base64.StdEncoding.EncodeToString(upstream.XOAuth2(mailbox, tok))}
	if res := x.send(saslIR); res.err != nil {
		return res, ""
	}
	res, refusal = x.await()
	ok = res.err == nil && refusal == ""
	return res, refusal
}

// upstreamGreeting reads the upstream's greeting, which must be OK, and
// reports whether its capabilities include SASL-IR.
func (c *session) upstreamGreeting(r *bufio.Reader, tok string) (saslIR bool, res upstreamResult) {
	greeting, err := readResponse(r, nil, maxUpstreamLine)
	if c.trace != nil {
		c.traceUpstream(greeting, "", tok)
	}
	if err != nil {
		return false, unavailable("the mail server did not greet", fmt.Errorf("read upstream greeting: %w", err))
	}
	var status, text string
	if bytes.HasPrefix(greeting, []byte("* ")) {
		status, text = parseStatus(greeting[2:])
	}
	if status != "OK" {
		msg := "the mail server is unavailable"
		if status == "BYE" && text != "" {
			msg += ": " + text
		}
		return false, unavailable(msg, fmt.Errorf("upstream greeting %q", auth.ClientText(string(bytes.TrimRight(greeting, "\r\n")))))
	}
	return hasCap(text, "SASL-IR"), upstreamResult{}
}

// xoauth2 is one AUTHENTICATE XOAUTH2 exchange with the upstream, under the
// client's tag.
type xoauth2 struct {
	c       *session
	up      net.Conn
	r       *bufio.Reader
	tag     string
	tok     string // the access token, for the trace to redact
	ir      string // the base64 XOAUTH2 response
	mailbox string

	sent     bool   // the response is sent (as initial response or after "+")
	answered bool   // the error challenge got its empty line
	pending  []byte // untagged data so far, handed to the client on success
	bye      string // an untagged BYE's text
	throttle string // an untagged "Request is throttled" text
}

// send writes the AUTHENTICATE command, with the initial response when the
// upstream has SASL-IR.
func (x *xoauth2) send(saslIR bool) upstreamResult {
	cmd := make([]byte, 0, len(x.tag)+len(x.ir)+32)
	cmd = append(cmd, x.tag...)
	cmd = append(cmd, " AUTHENTICATE XOAUTH2"...)
	if saslIR {
		cmd = append(cmd, ' ')
		cmd = append(cmd, x.ir...)
		x.sent = true
	}
	cmd = append(cmd, "\r\n"...)
	if x.c.trace != nil {
		line := x.tag + " AUTHENTICATE XOAUTH2"
		if x.sent {
			line += " " + redacted
		}
		x.c.traceLine(dirToUpstream, line)
	}
	if _, err := x.up.Write(cmd); err != nil {
		return unavailable("the mail server closed the connection", fmt.Errorf("write upstream AUTHENTICATE: %w", err))
	}
	return upstreamResult{}
}

// await reads the upstream's responses up to the tagged one. A non-empty
// refusal is the text of the upstream's NO to the token.
func (x *xoauth2) await() (res upstreamResult, refusal string) {
	tagSP := x.tag + " "
	for {
		start := len(x.pending)
		var err error
		x.pending, err = readResponse(x.r, x.pending, maxUpstreamLine)
		if x.c.trace != nil && len(x.pending) > start {
			x.c.traceUpstream(x.pending[start:], x.ir, x.tok)
		}
		if err == nil && len(x.pending) > maxUpstreamBefore+maxUpstreamLine {
			err = errUpstreamTooLong
		}
		if err != nil {
			return x.readFailed(err), ""
		}
		line := x.pending[start:]
		switch {
		case line[0] == '+':
			x.pending = x.pending[:start]
			if res := x.challenge(); res.err != nil {
				return res, ""
			}
		case bytes.HasPrefix(line, []byte("* ")):
			status, text := parseStatus(line[2:])
			if status == "BYE" {
				x.bye = text
			}
			if _, ok := upstream.ThrottleDelay(text); ok && status != "" {
				x.throttle = auth.ClientText(text)
			}
		case bytes.HasPrefix(line, []byte(tagSP)):
			return x.tagged(line, line[len(tagSP):])
		default:
			return unexpectedReply(line), ""
		}
	}
}

// readFailed is the result of a login whose reply could not be read.
func (x *xoauth2) readFailed(err error) upstreamResult {
	msg := "the mail server did not answer the login"
	if x.bye != "" {
		msg = "the mail server closed the connection: " + x.bye
	}
	if x.throttle != "" {
		x.c.throttled(x.mailbox, x.throttle)
		msg = x.throttle
	}
	return unavailable(msg, fmt.Errorf("read upstream AUTHENTICATE reply: %w", err))
}

// challenge answers a "+": with the response if not sent yet, else (an
// error challenge, Gmail's base64 JSON) with the empty response that ends
// the exchange; a second error challenge is an error.
func (x *xoauth2) challenge() upstreamResult {
	var reply string
	switch {
	case !x.sent:
		reply, x.sent = x.ir+"\r\n", true
		x.c.traceLine(dirToUpstream, redacted)
	case !x.answered:
		reply, x.answered = "\r\n", true
		x.c.traceLine(dirToUpstream, "")
	default:
		return unavailable("the mail server sent an unexpected challenge", errors.New("upstream sent a second challenge"))
	}
	if _, err := x.up.Write([]byte(reply)); err != nil {
		return unavailable("the mail server closed the connection", fmt.Errorf("write upstream SASL response: %w", err))
	}
	return upstreamResult{}
}

// tagged is the login's result from the tagged reply line (rest: after the
// tag): OK logs in, a throttling NO or BAD backs the mailbox off, another
// NO or BAD is a refusal of the token.
func (x *xoauth2) tagged(line, rest []byte) (upstreamResult, string) {
	status, text := parseStatus(rest)
	switch status {
	case "OK":
		return upstreamResult{up: x.up, upr: x.r, reply: x.pending}, ""
	case "NO", "BAD":
		if _, thr := upstream.ThrottleDelay(text); thr || x.throttle != "" {
			if !thr {
				text = x.throttle
			}
			x.c.throttled(x.mailbox, text)
			return unavailable(auth.ClientText(text), fmt.Errorf("upstream AUTHENTICATE: %s %s", status, text)), ""
		}
		if text == "" {
			text = status
		}
		return upstreamResult{}, text
	}
	return unexpectedReply(line), ""
}

func unexpectedReply(line []byte) upstreamResult {
	return unavailable("the mail server sent an unexpected reply", fmt.Errorf("upstream AUTHENTICATE reply %q", auth.ClientText(string(bytes.TrimRight(line, "\r\n")))))
}

// throttled makes new logins of mailbox wait as long as the upstream's
// throttling text suggests (upstream.DefaultThrottleBackoff if it does not).
func (c *session) throttled(mailbox, text string) {
	d, _ := upstream.ThrottleDelay(text)
	if d <= 0 {
		d = upstream.DefaultThrottleBackoff
	}
	c.s.backoff.Set(mailbox, d)
	c.Log.Warn("upstream throttles this mailbox; new logins wait", "mailbox", mailbox, "backoff", d, "reply", auth.ClientText(text))
}

// readResponse appends one upstream response to dst: a line with its line
// ending and, for untagged data ending in a literal, the literal and the
// rest of the response. limit bounds the bytes read.
func readResponse(r *bufio.Reader, dst []byte, limit int) ([]byte, error) {
	respStart := len(dst)
	n := 0
	for {
		lineStart := len(dst)
		for {
			frag, err := r.ReadSlice('\n')
			n += len(frag)
			if n > limit {
				return dst, errUpstreamTooLong
			}
			dst = append(dst, frag...)
			if err == nil {
				break
			}
			if err != bufio.ErrBufferFull {
				return dst, noEOF(err)
			}
		}
		// Only untagged data carries literals; status responses (OK NO BAD
		// BYE PREAUTH), tagged replies and continuations are one line.
		resp := dst[respStart:]
		if !bytes.HasPrefix(resp, []byte("* ")) {
			return dst, nil
		}
		if lineStart == respStart {
			if st, _ := parseStatus(resp[2:]); st != "" {
				return dst, nil
			}
		}
		size, _, ok := trailingLiteral(bytes.TrimRight(dst[lineStart:], "\r\n"))
		if !ok {
			return dst, nil
		}
		if size > int64(limit-n) {
			return dst, errUpstreamTooLong
		}
		start := len(dst)
		dst = slices.Grow(dst, int(size))[:start+int(size)]
		if _, err := io.ReadFull(r, dst[start:]); err != nil {
			return dst, noEOF(err)
		}
		n += int(size)
	}
}

// parseStatus splits "OK text" (after the tag or "* ") into the upper-cased
// status word, if it is one of OK NO BAD BYE PREAUTH, and the text without
// the line ending.
func parseStatus(b []byte) (status, text string) {
	b = bytes.TrimRight(b, "\r\n")
	word, rest, _ := bytes.Cut(b, []byte(" "))
	switch w := strings.ToUpper(string(word)); w {
	case "OK", "NO", "BAD", "BYE", "PREAUTH":
		return w, string(rest)
	}
	return "", string(b)
}

// hasCap reports whether status text starts with a [CAPABILITY ...] code
// that lists capability c.
func hasCap(text, c string) bool {
	const prefix = "[CAPABILITY "
	if len(text) < len(prefix) || !strings.EqualFold(text[:len(prefix)], prefix) {
		return false
	}
	list, _, ok := strings.Cut(text[len(prefix):], "]")
	if !ok {
		return false
	}
	for _, f := range strings.Fields(list) {
		if strings.EqualFold(f, c) {
			return true
		}
	}
	return false
}
