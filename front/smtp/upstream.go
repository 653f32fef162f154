package smtp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"mailproxy/auth"
	"mailproxy/front"
	"mailproxy/smtpclient"
	"mailproxy/submit"
	"mailproxy/upstream"
	"net"
	"os"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// connect opens the upstream for the session's grant under one deadline:
// token, dial, TLS, EHLO and AUTH XOAUTH2. A refused token is refreshed
// once and tried on a fresh connection. The error is a reply for the
// client; the cause is logged here.
func (s *session) connect() (submit.Submitter, error) {
	if sub := s.spoolFor(); sub != nil {
		// Spooled: no token and no upstream needed now.
		return sub, nil
	}
	if s.grant == nil { // a device no longer listed (reload)
		return nil, errAuthRequired
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.srv.upstreamTimeout())
	defer cancel()
	g := s.grant
	open := s.opener()
	if open == nil || g.Tokens == nil {
		s.log.Error("account has no upstream SMTP server or token source")
		s.c.setOutcome("no upstream")
		return nil, &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 5},
			Message: "no upstream mail server configured for this account"}
	}
	if s.srv.throttles.Load() != s.throttleGen {
		// A throttling reply was noted since AUTH checked.
		if se := s.throttled(g.Identity, "not connecting upstream: it throttled this mailbox"); se != nil {
			return nil, se
		}
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
	up, err := open(ctx, g.Identity, tok)
	if se := (*smtp.SMTPError)(nil); errors.As(err, &se) && tokenRefused(se) {
		s.log.Info("upstream refused the access token; refreshing it once",
			"identity", g.Identity, "reply", smtpclient.ReplyText(se))
		tok, err = g.Tokens.Refresh(ctx, tok)
		if err != nil {
			return nil, s.tokenFailure("refresh refused access token", err)
		}
		up, err = open(ctx, g.Identity, tok)
		if errors.As(err, &se) && tokenRefused(se) {
			s.log.Warn("upstream refused the refreshed access token; the account needs a new sign-in",
				"identity", g.Identity, "reply", smtpclient.ReplyText(se))
			s.srv.metrics.UpstreamAuthFailed(Name)
			front.ObserveUpstream(s.srv.metrics, g.Username, Name, fmt.Errorf("upstream refused the refreshed access token: %s", smtpclient.ReplyText(se)))
			s.c.setOutcome("upstream refused token")
			return nil, &smtp.SMTPError{
				Code:         454,
				EnhancedCode: smtp.EnhancedCode{4, 7, 0},
				Message: submit.OneLine(fmt.Sprintf("upstream refused the access token for %s; "+
					"the account needs attention (sign in again)", g.Username)),
			}
		}
	}
	front.ObserveUpstream(s.srv.metrics, g.Username, Name, err)
	if err != nil {
		return nil, s.connectFailure(ctx, err)
	}
	return up, nil
}

// opener gives the upstream session opener of the session's grant:
// Server.Opener's, else smtpclient to the grant's SMTP server; nil when
// there is neither.
func (s *session) opener() submit.Opener {
	if s.srv.Opener != nil {
		if o := s.srv.Opener(s.grant); o != nil {
			return o
		}
	}
	if s.grant.Upstream.AddrOf(Name) == "" {
		return nil
	}
	addr := s.grant.Upstream.AddrOf(Name)
	return smtpclient.Opener(smtpclient.Options{
		Addr:    addr,
		TLS:     s.grant.Upstream.TLSFor(addr), // full-size records: upstream sets that
		Dial:    s.srv.Dial,
		Domain:  s.srv.domain(),
		Timeout: s.srv.upstreamTimeout(),
		Trace:   s.c.trace,
		Log:     s.log,
	})
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
	return &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: submit.OneLine(ae.Msg)}
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
		s.log.Warn(authDisabledText, "identity", s.grant.Identity, "reply", smtpclient.ReplyText(se))
		s.c.setOutcome("smtp auth disabled")
		return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: authDisabledText}
	case errors.As(err, &se):
		s.log.Warn("upstream refused the connection or login", "reply", smtpclient.ReplyText(se))
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
	s.srv.throttles.Add(1)
	s.log.Warn("upstream throttles this mailbox; new logins wait", "identity", s.grant.Identity, "backoff", d, "reply", smtpclient.ReplyText(se))
}

// throttled is the throttle check of the login path: it refuses, with
// the time left, a new upstream login of identity while the upstream
// throttles it. AUTH runs it; the first MAIL, which opens the upstream,
// runs it again only if a throttling reply was noted since
// (Server.throttles), so a session logged in before the throttling still
// waits and one logged in after it pays the check once.
func (s *session) throttled(identity, msg string, attrs ...any) *smtp.SMTPError {
	d := s.srv.backoff.Remaining(identity)
	if d <= 0 {
		return nil
	}
	attrs = append(attrs, "identity", identity, "retry_in", d.Round(time.Second))
	s.srv.refusals.Log(s.log, slog.LevelWarn, identity, msg, attrs...)
	s.c.setOutcome("throttled")
	return throttledReply(d)
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
	return &smtp.SMTPError{Code: se.Code, EnhancedCode: se.EnhancedCode, Message: submit.Truncate(submit.OneLine(se.Message), maxReplyText)}
}

// maxReplyText bounds the upstream text passed on in one reply line (RFC
// 5321 allows 512 bytes per line; an upstream may send many lines).
const maxReplyText = 1000
