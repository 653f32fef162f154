package imap

import (
	"encoding/base64"
	"errors"
	"log/slog"
	"time"

	"mailproxy/auth"
	"mailproxy/front"
	"mailproxy/relay"
	"mailproxy/upstream"
)

// authenticate runs AUTHENTICATE PLAIN or LOGIN.
func (c *session) authenticate(tagb []byte) bool {
	p := &c.p
	args := p.args
	if len(args) < 1 || len(args) > 2 || args[0].kind != argAtom || (len(args) == 2 && args[1].kind != argAtom) {
		return c.bad(tagb, "AUTHENTICATE needs a mechanism and at most an initial response")
	}
	if !c.plaintextOK() {
		return c.refusePlaintext(tagb)
	}
	tag := string(tagb)
	mech := p.bytes(args[0].span)
	for i, b := range mech {
		if 'a' <= b && b <= 'z' {
			mech[i] = b - 'a' + 'A'
		}
	}
	var resp []byte // nil: no initial response
	if len(args) == 2 {
		var err error
		if resp, err = front.DecodeSASL(p.bytes(args[1].span)); err != nil {
			return c.bad(tagb, "invalid base64 in initial response")
		}
	}

	var user, pass string
	srv := front.NewSASLServer(string(mech), func(u, pw string) { user, pass = u, pw })
	if srv == nil {
		c.reply(tagb, "NO", "unsupported authentication mechanism")
		return c.countError()
	}

	for {
		challenge, done, err := srv.Next(resp)
		if err != nil {
			if front.IdentityRefused(err) {
				c.reply(tagb, "NO", "[AUTHORIZATIONFAILED] authorization identity not supported")
				return c.countError()
			}
			return c.bad(tagb, "invalid SASL response")
		}
		if done {
			break
		}
		c.w.WriteString("+ ")
		c.w.WriteString(base64.StdEncoding.EncodeToString(challenge))
		c.w.WriteString("\r\n")
		if c.flush() != nil {
			c.Outcome = outcomeClientGone
			return false
		}
		line, err := p.readContinuation()
		if err != nil {
			c.readFailed(err)
			return false
		}
		if len(line) == 1 && line[0] == '*' {
			c.traceLine(dirFromClient, "*")
			return c.bad(tagb, "AUTHENTICATE cancelled")
		}
		c.traceLine(dirFromClient, redacted)
		if resp, err = front.DecodeSASL(line); err != nil {
			return c.bad(tagb, "invalid base64 in SASL response")
		}
	}
	return c.login(tag, user, pass)
}

// login checks the local password, logs in upstream and relays. It reports
// whether to read the next command (false once relayed or closed).
func (c *session) login(tag, user, pass string) bool {
	tagb := []byte(tag)
	grant, log, ae := c.Authenticate(c.s.Auth, user, pass)
	if ae != nil {
		if ae.Kind == auth.AuthFailed || errors.Is(ae, auth.ErrLockedOut) {
			c.logAuthFailure(user, ae)
		}
		c.refuse(tagb, ae)
		return c.countError()
	}

	mailbox := grant.Mailbox // always set (auth.grantFor)
	if d := c.s.backoff.Remaining(mailbox); d > 0 {
		c.s.refusals.Log(log, slog.LevelWarn, mailbox, "imap login refused: the upstream throttled this mailbox", "mailbox", mailbox, "retry_in", d.Round(time.Second))
		c.reply(tagb, "NO", "[UNAVAILABLE] "+upstream.ThrottledText(d))
		return c.countError()
	}
	release, ok := c.s.mailboxes.Acquire(mailbox)
	if !ok {
		c.s.refusals.Log(log, slog.LevelWarn, mailbox, "imap login refused: too many upstream sessions for this mailbox", "mailbox", mailbox)
		c.reply(tagb, "NO", "[UNAVAILABLE] too many sessions for this mailbox")
		return c.countError()
	}
	defer release()

	dl := c.BeginUpstream(c.s.upstreamTimeout())
	res := c.openUpstream(dl, tag, grant, log)
	if res.err != nil {
		c.UpstreamFailed(log, res.err)
		c.refuse(tagb, res.err)
		return c.countError()
	}
	if c.Shutting() {
		res.up.Close()
		c.reply(tagb, "NO", "[UNAVAILABLE] server shutting down")
		c.bye("server shutting down", outcomeShutdown, false)
		return false
	}

	// Logged in: off the listener's pre-login count before the client
	// hears so.
	c.LeaveWaiting()

	// The upstream's untagged data and its tagged OK, which usually carries
	// [CAPABILITY ...], go to the client as they are.
	c.w.Write(res.reply)
	if err := c.flush(); err != nil {
		res.up.Close()
		c.Outcome = outcomeClientGone
		return false
	}
	c.NC.SetDeadline(time.Time{})
	res.up.SetDeadline(time.Time{})
	c.SetState(front.StateRelay)
	log.Info("imap login relayed", "upstream", grant.Upstream.AddrOf(Name), "mailbox", grant.Mailbox)

	// The parser and writer are done with; only the reader goes on, since
	// it may hold commands the client pipelined after its login.
	r, up, upr := c.r, res.up, res.upr
	c.p, c.r, c.w, res = parser{}, nil, nil, upstreamResult{}
	if c.trace != nil {
		c.trace.Debug("relaying; trace ends")
	}
	err := c.Relay(log, grant.Username, c.conn, r, up, upr, relay.RelayOptions{Idle: c.s.idleTimeout(), Goodbye: &c.goodbye.Goodbye, SafePoint: &c.goodbye})
	switch {
	case errors.Is(err, relay.ErrSaidGoodbye):
		c.Outcome = outcomeShutdown
	case err != nil && !errors.Is(err, relay.ErrIdleTimeout):
		log.Debug("imap relay ended", "err", err)
	}
	return false
}

// logAuthFailure writes the one line fail2ban and the like look for:
// level=WARN msg="auth failure" proto=imap remote=IP user=NAME. The
// username is the client's, quoted by the handler when it needs to be, so
// it cannot forge a line.
func (c *session) logAuthFailure(user string, ae *auth.AuthError) {
	attrs := []any{"proto", Name, "remote", c.Remote().String(), "user", user, "conn", c.ID}
	if errors.Is(ae, auth.ErrLockedOut) {
		attrs = append(attrs, "reason", "locked out")
	}
	if errors.Is(ae, auth.ErrLockedOut) {
		// fail2ban saw the failures that made the block; a client that
		// keeps trying while blocked is counted, not logged each time.
		c.s.refusals.Log(c.s.logger(), slog.LevelWarn, c.Remote().String()+" "+user, "auth failure", attrs...)
		return
	}
	c.s.logger().Warn("auth failure", attrs...)
}

// refuse answers a failed login.
func (c *session) refuse(tag []byte, ae *auth.AuthError) {
	switch ae.Kind {
	case auth.AuthNeedsSignIn:
		c.reply(tag, "NO", "[ALERT] "+auth.ClientText(ae.Msg))
	case auth.AuthUnavailable:
		c.reply(tag, "NO", "[UNAVAILABLE] "+auth.ClientText(ae.Msg))
	default:
		if errors.Is(ae.Err, front.ErrUpstreamRefused) {
			c.reply(tag, "NO", "[AUTHENTICATIONFAILED] "+auth.ClientText(ae.Msg))
			return
		}
		c.reply(tag, "NO", "[AUTHENTICATIONFAILED] Invalid credentials")
	}
}
