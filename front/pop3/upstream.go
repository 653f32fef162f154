package pop3

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"mailproxy/auth"
	"mailproxy/upstream"
)

var errUpstreamTooLong = errors.New("upstream line too long")

type upstreamResult struct {
	up    net.Conn
	upr   *bufio.Reader
	addr  string
	reply []byte // the upstream's +OK line, for the client
	err   *auth.AuthError
}

func unavailable(msg string, err error) upstreamResult {
	return upstreamResult{err: &auth.AuthError{Kind: auth.AuthUnavailable, Msg: msg, Err: err}}
}

// openUpstream logs in to the account's upstream POP3 server with XOAUTH2
// by deadline. When the upstream refuses the token it forces one refresh
// and tries again on a new connection.
func (c *session) openUpstream(deadline time.Time, g *auth.Grant, log *slog.Logger) upstreamResult {
	if g == nil || g.Tokens == nil || g.Upstream.AddrOf(Name) == "" {
		return unavailable("no POP3 server configured for this account", errors.New("grant without POP3 upstream"))
	}
	addr := g.Upstream.AddrOf(Name)
	ctx, cancel := context.WithDeadline(c.Ctx, deadline)
	defer cancel()
	var res upstreamResult
	if ae, _ := c.LoginUpstream(ctx, deadline, g, log, func(ctx context.Context, tok string) string {
		var refusal string
		res, refusal = c.tryUpstream(ctx, addr, g, tok)
		return refusal
	}); ae != nil {
		return upstreamResult{err: ae}
	}
	res.addr = addr
	return res
}

// tryUpstream makes one login attempt. A non-empty refusal is the text of
// the upstream's -ERR to the token; the connection is then closed.
func (c *session) tryUpstream(ctx context.Context, addr string, g *auth.Grant, tok string) (res upstreamResult, refusal string) {
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
	greeting, err := readUpstreamLine(r)
	if err != nil {
		return unavailable("the mail server did not greet", fmt.Errorf("read upstream greeting: %w", err)), ""
	}
	if !bytes.HasPrefix(greeting, []byte("+OK")) {
		return unavailable("the mail server is unavailable", fmt.Errorf("upstream greeting %q", auth.ClientText(string(trimEOL(greeting))))), ""
	}

	mailbox := g.Mailbox // always set (auth.grantFor)
	ir := base64.StdEncoding.EncodeToString(upstream.XOAuth2(mailbox, tok))
	// RFC 5034: the initial response only when the command line stays
	// within RFC 2449's 255 octets; an Entra token never does, so Exchange
	// sees the two-step form Microsoft documents.
	sent := false
	cmd := "AUTH XOAUTH2\r\n"
	if len("AUTH XOAUTH2 ")+len(ir)+2 <= maxCommandLine {
		cmd = "AUTH XOAUTH2 " + ir + "\r\n"
		sent = true
	}
	if _, err := up.Write([]byte(cmd)); err != nil {
		return unavailable("the mail server closed the connection", fmt.Errorf("write upstream AUTH: %w", err)), ""
	}
	answered := false // the error challenge got its empty line
	for {
		line, err := readUpstreamLine(r)
		if err != nil {
			return unavailable("the mail server did not answer the login", fmt.Errorf("read upstream AUTH reply: %w", err)), ""
		}
		switch {
		case bytes.HasPrefix(line, []byte("+OK")):
			ok = true
			return upstreamResult{up: up, upr: r, reply: line}, ""
		case bytes.HasPrefix(line, []byte("+")):
			var reply string
			switch {
			case !sent:
				reply, sent = ir+"\r\n", true
			case !answered:
				// An error challenge (Gmail: base64 JSON): answered with
				// an empty response, the server then says -ERR.
				reply, answered = "\r\n", true
			default:
				return unavailable("the mail server sent an unexpected challenge", errors.New("upstream sent a second challenge")), ""
			}
			if _, err := up.Write([]byte(reply)); err != nil {
				return unavailable("the mail server closed the connection", fmt.Errorf("write upstream SASL response: %w", err)), ""
			}
		case bytes.HasPrefix(line, []byte("-ERR")):
			text := strings.TrimSpace(string(trimEOL(line[len("-ERR"):])))
			if d, thr := upstream.ThrottleDelay(text); thr {
				if d <= 0 {
					d = upstream.DefaultThrottleBackoff
				}
				c.s.backoff.Set(mailbox, d)
				c.Log.Warn("upstream throttles this mailbox; new logins wait", "mailbox", mailbox, "backoff", d, "reply", auth.ClientText(text))
				return unavailable(auth.ClientText(text), fmt.Errorf("upstream AUTH: -ERR %s", text)), ""
			}
			if code := respCode(text); code == "SYS/TEMP" || code == "IN-USE" || code == "LOGIN-DELAY" {
				return unavailable("the mail server is busy: "+auth.ClientText(text), fmt.Errorf("upstream AUTH: -ERR %s", text)), ""
			}
			if text == "" {
				text = "-ERR"
			}
			return upstreamResult{}, text
		default:
			return unavailable("the mail server sent an unexpected reply", fmt.Errorf("upstream AUTH reply %q", auth.ClientText(string(trimEOL(line))))), ""
		}
	}
}

// readUpstreamLine reads one line, line ending included, of at most
// maxUpstreamLine bytes.
func readUpstreamLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		frag, err := r.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > maxUpstreamLine {
			return nil, errUpstreamTooLong
		}
		if err == nil {
			return line, nil
		}
		if err != bufio.ErrBufferFull {
			return nil, err
		}
	}
}

func trimEOL(b []byte) []byte { return bytes.TrimRight(b, "\r\n") }

// respCode returns the RFC 2449 response code at the start of an -ERR
// text ("SYS/TEMP" of "[SYS/TEMP] busy"), upper-cased, or "".
func respCode(text string) string {
	if !strings.HasPrefix(text, "[") {
		return ""
	}
	code, _, ok := strings.Cut(text[1:], "]")
	if !ok {
		return ""
	}
	return strings.ToUpper(code)
}
