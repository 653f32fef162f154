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

// errUpstreamRefused marks the AuthError of a login whose access token the
// upstream refused, even after a refresh.
var errUpstreamRefused = errors.New("upstream refused the access token")

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
	// Getting the token may wait for the identity provider. Give it half
	// of the time at most: when the provider hangs, the token source
	// hands out the current token once we stop waiting, and the dial and
	// XOAUTH2 exchange still need the rest.
	tctx, tcancel := context.WithDeadline(ctx, time.Now().Add(time.Until(deadline)/2))
	tok, err := g.Tokens.Token(tctx)
	tcancel()
	if err != nil {
		return upstreamResult{err: auth.TokenAuthError(g.Username, err)}
	}
	for attempt := 1; ; attempt++ {
		res, refusal := c.tryUpstream(ctx, tag, g, tok)
		if refusal == "" {
			if res.err != nil {
				front.ObserveUpstream(c.s.metrics, g.Username, Name, res.err)
			} else {
				front.ObserveUpstream(c.s.metrics, g.Username, Name, nil)
			}
			return res
		}
		log.Warn("imap upstream refused the access token", "attempt", attempt, "reply", refusal)
		if attempt == 2 {
			c.s.metrics.UpstreamAuthFailed(Name)
			res := upstreamResult{err: &auth.AuthError{
				Kind: auth.AuthFailed,
				Msg:  fmt.Sprintf("upstream refused the access token for %s; the account may need a new sign-in", g.Username),
				Err:  fmt.Errorf("%w: %s", errUpstreamRefused, refusal),
			}}
			front.ObserveUpstream(c.s.metrics, g.Username, Name, res.err)
			return res
		}
		if tok, err = g.Tokens.Refresh(ctx, tok); err != nil {
			return upstreamResult{err: auth.TokenAuthError(g.Username, err)}
		}
	}
}

// tryUpstream makes one login attempt. A non-empty refusal is the text of
// the upstream's NO to the token; res.up is then closed.
func (c *session) tryUpstream(ctx context.Context, tag string, g *auth.Grant, tok string) (res upstreamResult, refusal string) {
	addr := g.Upstream.AddrOf(Name)
	up, err := upstream.DialTLS(ctx, c.s.Dial, addr, g.Upstream.TLSFor(addr))
	if err != nil {
		return unavailable("cannot reach the mail server", fmt.Errorf("dial upstream %s: %w", addr, err)), ""
	}
	c.SetUpstream(up)
	ok := false
	defer func() {
		if !ok {
			up.Close()
			c.SetUpstream(nil)
		}
	}()
	if dl, has := ctx.Deadline(); has {
		up.SetDeadline(dl)
	}
	r := bufio.NewReaderSize(up, ioBufferSize)

	greeting, err := readResponse(r, nil, maxUpstreamLine)
	if c.trace != nil {
		c.traceUpstream(greeting, "", tok)
	}
	if err != nil {
		return unavailable("the mail server did not greet", fmt.Errorf("read upstream greeting: %w", err)), ""
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
		return unavailable(msg, fmt.Errorf("upstream greeting %q", front.Clean(string(bytes.TrimRight(greeting, "\r\n"))))), ""
	}
	saslIR := hasCap(text, "SASL-IR")

	mailbox := g.Mailbox
	if mailbox == "" {
		mailbox = g.Username
	}
	ir := base64.StdEncoding.EncodeToString(upstream.XOAuth2(mailbox, tok))
	cmd := make([]byte, 0, len(tag)+len(ir)+32)
	cmd = append(cmd, tag...)
	cmd = append(cmd, " AUTHENTICATE XOAUTH2"...)
	sent := false
	if saslIR {
		cmd = append(cmd, ' ')
		cmd = append(cmd, ir...)
		sent = true
	}
	cmd = append(cmd, "\r\n"...)
	if c.trace != nil {
		line := tag + " AUTHENTICATE XOAUTH2"
		if sent {
			line += " " + redacted
		}
		c.traceLine(dirToUpstream, line)
	}
	if _, err := up.Write(cmd); err != nil {
		return unavailable("the mail server closed the connection", fmt.Errorf("write upstream AUTHENTICATE: %w", err)), ""
	}

	var (
		pending  []byte // untagged data so far, handed to the client on success
		bye      string
		answered bool   // the error challenge got its empty line
		throttle string // an untagged "Request is throttled" text
	)
	tagSP := tag + " "
	for {
		start := len(pending)
		pending, err = readResponse(r, pending, maxUpstreamLine)
		if c.trace != nil && len(pending) > start {
			c.traceUpstream(pending[start:], ir, tok)
		}
		if err == nil && len(pending) > maxUpstreamBefore+maxUpstreamLine {
			err = errUpstreamTooLong
		}
		if err != nil {
			msg := "the mail server did not answer the login"
			if bye != "" {
				msg = "the mail server closed the connection: " + bye
			}
			if throttle != "" {
				c.throttled(mailbox, throttle)
				msg = throttle
			}
			return unavailable(msg, fmt.Errorf("read upstream AUTHENTICATE reply: %w", err)), ""
		}
		line := pending[start:]
		switch {
		case line[0] == '+':
			pending = pending[:start]
			var reply string
			switch {
			case !sent:
				reply, sent = ir+"\r\n", true
				c.traceLine(dirToUpstream, redacted)
			case !answered:
				// An error challenge (Gmail: base64 JSON): the
				// exchange ends when we answer with an empty response.
				reply, answered = "\r\n", true
				c.traceLine(dirToUpstream, "")
			default:
				return unavailable("the mail server sent an unexpected challenge", errors.New("upstream sent a second challenge")), ""
			}
			if _, err := up.Write([]byte(reply)); err != nil {
				return unavailable("the mail server closed the connection", fmt.Errorf("write upstream SASL response: %w", err)), ""
			}
		case bytes.HasPrefix(line, []byte("* ")):
			status, text := parseStatus(line[2:])
			if status == "BYE" {
				bye = text
			}
			if _, ok := upstream.ThrottleDelay(text); ok && status != "" {
				throttle = front.Clean(text)
			}
		case bytes.HasPrefix(line, []byte(tagSP)):
			status, text := parseStatus(line[len(tagSP):])
			switch status {
			case "OK":
				ok = true
				return upstreamResult{up: up, upr: r, reply: pending}, ""
			case "NO", "BAD":
				if _, thr := upstream.ThrottleDelay(text); thr || throttle != "" {
					if !thr {
						text = throttle
					}
					c.throttled(mailbox, text)
					return unavailable(front.Clean(text), fmt.Errorf("upstream AUTHENTICATE: %s %s", status, text)), ""
				}
				if text == "" {
					text = status
				}
				return upstreamResult{}, text
			}
			return unavailable("the mail server sent an unexpected reply", fmt.Errorf("upstream AUTHENTICATE reply %q", front.Clean(string(bytes.TrimRight(line, "\r\n"))))), ""
		default:
			return unavailable("the mail server sent an unexpected reply", fmt.Errorf("upstream AUTHENTICATE reply %q", front.Clean(string(bytes.TrimRight(line, "\r\n"))))), ""
		}
	}
}

// throttled makes new logins of mailbox wait as long as the upstream's
// throttling text suggests (upstream.DefaultThrottleBackoff if it does not).
func (c *session) throttled(mailbox, text string) {
	d, _ := upstream.ThrottleDelay(text)
	if d <= 0 {
		d = upstream.DefaultThrottleBackoff
	}
	c.s.backoff.Set(mailbox, d)
	c.Log.Warn("upstream throttles this mailbox; new logins wait", "mailbox", mailbox, "backoff", d, "reply", front.Clean(text))
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
