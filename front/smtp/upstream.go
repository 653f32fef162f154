package smtp

import (
	"context"
	"errors"
	"fmt"
	"mailproxy/auth"
	"mailproxy/upstream"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// connect opens the upstream for the session's grant under one deadline:
// token, dial, TLS, EHLO and AUTH XOAUTH2. A refused token is refreshed
// once and tried on a fresh connection. The error is a reply for the
// client; the cause is logged here.
func (s *session) connect() (*upClient, error) {
	ctx, cancel := context.WithTimeout(s.srv.baseCtx, s.srv.upstreamTimeout())
	defer cancel()
	g := s.grant
	if g.Upstream == nil || g.Upstream.SMTPAddr == "" || g.Tokens == nil {
		s.log.Error("account has no upstream SMTP server or token source")
		s.c.setOutcome("no upstream")
		return nil, &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 5},
			Message: "no upstream mail server configured for this account"}
	}
	if d := s.srv.backoff.Remaining(g.Identity); d > 0 {
		s.log.Warn("not connecting upstream: it throttled this mailbox", "identity", g.Identity, "retry_in", d.Round(time.Second))
		s.c.setOutcome("throttled")
		return nil, throttledReply(d)
	}
	// Getting the token may wait for the identity provider. Give it half
	// of the time at most: when the provider hangs, the token source
	// hands out the current token once we stop waiting, and the dial and
	// AUTH still need the rest.
	tctx, tcancel := context.WithTimeout(ctx, s.srv.upstreamTimeout()/2)
	tok, err := g.Tokens.Token(tctx)
	tcancel()
	if err != nil {
		return nil, s.tokenFailure("get access token", err)
	}
	up, err := s.openAuthed(ctx, tok)
	if se := (*smtp.SMTPError)(nil); errors.As(err, &se) && tokenRefused(se) {
		s.log.Info("upstream refused the access token; refreshing it once",
			"identity", g.Identity, "reply", replyText(se))
		tok, err = g.Tokens.Refresh(ctx, tok)
		if err != nil {
			return nil, s.tokenFailure("refresh refused access token", err)
		}
		up, err = s.openAuthed(ctx, tok)
		if errors.As(err, &se) && tokenRefused(se) {
			s.log.Warn("upstream refused the refreshed access token; the account needs a new sign-in",
				"identity", g.Identity, "reply", replyText(se))
			s.srv.metrics.UpstreamAuthFailed("smtp")
			s.c.setOutcome("upstream refused token")
			return nil, &smtp.SMTPError{
				Code:         454,
				EnhancedCode: smtp.EnhancedCode{4, 7, 0},
				Message: oneLine(fmt.Sprintf("upstream refused the access token for %s; "+
					"the account needs attention (sign in again)", g.Username)),
			}
		}
	}
	if err != nil {
		return nil, s.connectFailure(ctx, err)
	}
	up.timeout = upstreamCommandTimeout
	return up, nil
}

// openAuthed dials and authenticates with tok. Some servers refuse an AUTH
// line as long as an Entra token makes it (~2 KB); then the token is sent
// after the 334 prompt instead, on a new connection if the server hung up.
func (s *session) openAuthed(ctx context.Context, tok string) (*upClient, error) {
	resp := upstream.XOAuth2(s.grant.Identity, tok)
	up, err := s.dial(ctx)
	if err != nil {
		return nil, err
	}
	err = s.auth(ctx, up, resp, true)
	if se := (*smtp.SMTPError)(nil); errors.As(err, &se) && (se.Code == 500 || se.Code == 501) {
		s.log.Debug("upstream refused the AUTH line with the token; sending it after the 334 prompt",
			"reply", replyText(se))
		err = s.auth(ctx, up, resp, false)
		if err != nil && !errors.As(err, &se) {
			up.abort()
			if up, err = s.dial(ctx); err != nil {
				return nil, err
			}
			err = s.auth(ctx, up, resp, false)
		}
	}
	if err != nil {
		up.abort()
		return nil, err
	}
	return up, nil
}

// auth runs AUTH XOAUTH2 under ctx.
func (s *session) auth(ctx context.Context, up *upClient, resp []byte, ir bool) error {
	stop := context.AfterFunc(ctx, func() { up.raw.Close() })
	err := up.authXOAuth2(resp, ir)
	if !stop() {
		return fmt.Errorf("upstream AUTH: %w", context.Cause(ctx))
	}
	if err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return se
		}
		return fmt.Errorf("upstream AUTH: %w", err)
	}
	return nil
}

// dial connects to the upstream (implicit TLS on port 465, else
// STARTTLS, certificates checked against the configured roots), reads the
// greeting and says EHLO. Everything runs under ctx.
func (s *session) dial(ctx context.Context) (*upClient, error) {
	addr := s.grant.Upstream.SMTPAddr
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("upstream address %q: %w", addr, err)
	}
	cfg := s.grant.Upstream.TLSFor(addr)
	// Full-size TLS records from the first message on: small first
	// records help a browser render early, not a mail submission.
	cfg.DynamicRecordSizingDisabled = true
	var conn, raw net.Conn
	starttls := cfg
	if port == "465" {
		tc, err := upstream.DialTLS(ctx, s.srv.Dial, addr, cfg)
		if err != nil {
			return nil, fmt.Errorf("upstream: %w", err)
		}
		conn, raw, starttls = tc, tc.NetConn(), nil
	} else {
		dial := s.srv.Dial
		if dial == nil {
			var d net.Dialer
			dial = d.DialContext
		}
		if raw, err = dial(ctx, "tcp", addr); err != nil {
			return nil, fmt.Errorf("dial upstream %s: %w", addr, err)
		}
		conn = raw
	}
	if err := s.setRaw(raw); err != nil {
		raw.Close()
		return nil, err
	}
	up := newUpstream(conn, raw, s.c.trace)
	up.timeout = s.srv.upstreamTimeout()
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	err = up.hello(ctx, s.srv.domain(), starttls)
	if !stop() {
		return nil, fmt.Errorf("upstream %s: %w", addr, context.Cause(ctx))
	}
	if err != nil {
		raw.Close()
		return nil, fmt.Errorf("upstream %s: %w", addr, err)
	}
	return up, nil
}

// tokenFailure turns an error of the token source into the client's reply.
func (s *session) tokenFailure(op string, err error) error {
	ae := auth.TokenAuthError(s.grant.Username, err)
	s.log.Warn("cannot get an access token", "op", op, "err", err)
	if ae.Kind == auth.AuthNeedsSignIn {
		s.c.setOutcome("needs sign-in")
	} else {
		s.c.setOutcome("token unavailable")
	}
	return &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: oneLine(ae.Msg)}
}

const authDisabledText = "SMTP AUTH is disabled for this mailbox or tenant; an admin must enable " +
	"Authenticated SMTP (Set-CASMailbox -SmtpClientAuthenticationDisabled $false)"

// isTimeout reports whether err is a deadline passing.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// connectFailure turns a failure to open the upstream into the client's
// reply.
func (s *session) connectFailure(ctx context.Context, err error) error {
	var se *smtp.SMTPError
	switch {
	case errors.As(err, &se) && se.Code == 535 && se.EnhancedCode == smtp.EnhancedCode{5, 7, 139}:
		s.log.Warn(authDisabledText, "identity", s.grant.Identity, "reply", replyText(se))
		s.c.setOutcome("smtp auth disabled")
		return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: authDisabledText}
	case errors.As(err, &se):
		s.log.Warn("upstream refused the connection or login", "reply", replyText(se))
		s.c.setOutcome("upstream refused login")
		s.noteThrottle(se)
		return passReply(se)
	case ctx.Err() != nil || isTimeout(err):
		// The connection's deadline equals ctx's and may fire first.
		s.log.Warn("upstream did not answer in time", "err", err)
		s.c.setOutcome("upstream timeout")
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 1},
			Message: "upstream mail server did not answer in time; try again later"}
	default:
		s.log.Warn("cannot reach upstream", "err", err)
		s.c.setOutcome("upstream unreachable")
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 1},
			Message: "cannot reach the upstream mail server; try again later"}
	}
}

// noteThrottle makes new upstream logins of the session's identity wait
// when se is a throttling reply: Exchange counts every attempt, so retrying
// at once only prolongs it. The reply itself still goes to the client.
func (s *session) noteThrottle(se *smtp.SMTPError) {
	d, ok := throttleDelay(se)
	if !ok {
		return
	}
	s.srv.backoff.Set(s.grant.Identity, d)
	s.log.Warn("upstream throttles this mailbox; new logins wait", "identity", s.grant.Identity, "backoff", d, "reply", replyText(se))
}

// throttleDelay says whether an upstream reply is a throttling one, and
// for how long to back off: the time the reply suggests, else
// upstream.DefaultThrottleBackoff. Exchange Online's throttling replies
// include "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
// "451 4.7.500 Server busy. Please try again later", "421 4.4.2 Message
// submission rate for this client has exceeded the configured limit" and
// texts with "Request is throttled. Suggested Backoff Time: N".
func throttleDelay(se *smtp.SMTPError) (time.Duration, bool) {
	if se.Code < 400 || se.Code >= 500 {
		return 0, false
	}
	d, ok := upstream.ThrottleDelay(se.Message)
	if !ok {
		ec := se.EnhancedCode
		msg := strings.ToLower(se.Message)
		ok = se.Code == 432 ||
			(ec[0] == 4 && ec[1] == 7 && ec[2] >= 500 && ec[2] <= 699) ||
			strings.Contains(msg, "thread limit") ||
			strings.Contains(msg, "rate limit") ||
			strings.Contains(msg, "submission rate") ||
			strings.Contains(msg, "exceeded the configured limit") ||
			strings.Contains(msg, "server busy") ||
			(strings.Contains(msg, "concurrent") && strings.Contains(msg, "limit"))
	}
	if !ok {
		return 0, false
	}
	if d <= 0 {
		d = upstream.DefaultThrottleBackoff
	}
	return d, true
}

// tokenRefused says whether an AUTH reply means the token was not
// accepted (Exchange: 535 5.7.3; Gmail: 535 5.7.8), as opposed to SMTP AUTH
// being switched off (535 5.7.139).
func tokenRefused(se *smtp.SMTPError) bool {
	return se.Code == 535 && se.EnhancedCode != smtp.EnhancedCode{5, 7, 139}
}

// passReply copies an upstream reply for the client: its own code, enhanced
// code and text, on one line.
func passReply(se *smtp.SMTPError) *smtp.SMTPError {
	return &smtp.SMTPError{Code: se.Code, EnhancedCode: se.EnhancedCode, Message: truncate(oneLine(se.Message), maxReplyText)}
}

// maxReplyText bounds the upstream text passed on in one reply line (RFC
// 5321 allows 512 bytes per line; an upstream may send many lines).
const maxReplyText = 1000

// replyText renders an upstream reply for the log.
func replyText(se *smtp.SMTPError) string {
	s := strconv.Itoa(se.Code)
	if se.EnhancedCode != smtp.EnhancedCodeNotSet && se.EnhancedCode != smtp.NoEnhancedCode {
		s += fmt.Sprintf(" %d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	}
	return s + " " + oneLine(se.Message)
}

// oneLine joins a multi-line reply text and drops control characters.
func oneLine(s string) string {
	return strings.TrimSpace(strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s))
}

// parseStatus splits an upstream reply text like "2.0.0 OK <id> Queued"
// into its enhanced code and the rest.
func parseStatus(text string) (smtp.EnhancedCode, string) {
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
