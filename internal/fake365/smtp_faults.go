package fake365

import (
	"fmt"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// Replies Exchange Online gives that the spool must tell apart: about a
// recipient or the message (a DSN), about the mailbox (pause), or
// temporary (retry).
var (
	// SMTPRecipientNotFound: 550 5.1.10, a bad recipient.
	SMTPRecipientNotFound = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 10},
		Message: "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"}
	// SMTPMessageTooBig: 552 5.3.4.
	SMTPMessageTooBig = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
		Message: "Message size exceeds fixed maximum message size"}
	// SMTPSendAsDenied: 550 5.7.60, mailbox level.
	SMTPSendAsDenied = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 60},
		Message: "SMTP; Client does not have permissions to send as this sender"}
	// SMTPSenderBlocked: 550 5.2.252; 5.2.251-5.2.255 are about the sending
	// mailbox (continuous error throttling follows). Mailbox level.
	SMTPSenderBlocked = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 2, 252},
		Message: "SendAsDenied; sender is blocked from sending (continuous error throttling)"}
	// SMTPAuthDisabled: 535 5.7.139, SMTP AUTH off for the tenant or mailbox.
	SMTPAuthDisabled = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139},
		Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."}
	// SMTPTemporary: 451 4.3.0.
	SMTPTemporary = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "Temporary server error. Please try again later"}
)

// SMTPThrottled is Exchange's throttling reply with its suggested backoff.
func SMTPThrottled(backoff time.Duration) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 432, EnhancedCode: smtp.EnhancedCode{4, 3, 2},
		Message: fmt.Sprintf("STOREDRV.ClientSubmit; Request is throttled. Suggested Backoff Time: %d milliseconds", backoff.Milliseconds())}
}

// smtpFaults are the failures on demand beyond FailAt. Guarded by
// SMTPUpstream.mu.
type smtpFaults struct {
	times map[string][]*smtp.SMTPError // stage -> the next replies, once each
	rcpt  map[string]*smtp.SMTPError   // lower-case address -> reply to RCPT
	rate  int                          // messages per window before throttling; 0 = none
	win   time.Duration
	now   func() time.Time
	sent  []time.Time
	back  time.Duration
}

// FailNext makes the next len(errs) commands of stage ("AUTH", "MAIL",
// "RCPT", "DATA") fail with errs in turn; then they succeed again.
func (u *SMTPUpstream) FailNext(stage string, errs ...*smtp.SMTPError) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.faults.times == nil {
		u.faults.times = map[string][]*smtp.SMTPError{}
	}
	stage = strings.ToUpper(stage)
	u.faults.times[stage] = append(u.faults.times[stage], errs...)
}

// FailRcpt makes RCPT TO addr fail with e (nil clears it).
func (u *SMTPUpstream) FailRcpt(addr string, e *smtp.SMTPError) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.faults.rcpt == nil {
		u.faults.rcpt = map[string]*smtp.SMTPError{}
	}
	if e == nil {
		delete(u.faults.rcpt, strings.ToLower(addr))
		return
	}
	u.faults.rcpt[strings.ToLower(addr)] = e
}

// SetRate throttles like Exchange Online: more than n messages (at MAIL)
// within per are answered SMTPThrottled(backoff). now is the clock (nil:
// time.Now); n = 0 turns it off.
func (u *SMTPUpstream) SetRate(n int, per, backoff time.Duration, now func() time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if now == nil {
		now = time.Now
	}
	u.faults.rate, u.faults.win, u.faults.back, u.faults.now, u.faults.sent = n, per, backoff, now, nil
}

// faultAt returns the reply on demand for stage (and the RCPT address),
// or nil. Called with u.mu held.
func (u *SMTPUpstream) faultAt(stage, arg string) *smtp.SMTPError {
	f := &u.faults
	if q := f.times[stage]; len(q) > 0 {
		f.times[stage] = q[1:]
		return q[0]
	}
	if stage == "RCPT" {
		if e := f.rcpt[strings.ToLower(arg)]; e != nil {
			return e
		}
	}
	if stage == "MAIL" && f.rate > 0 {
		now := f.now()
		keep := f.sent[:0]
		for _, t := range f.sent {
			if now.Sub(t) < f.win {
				keep = append(keep, t)
			}
		}
		f.sent = keep
		if len(f.sent) >= f.rate {
			return SMTPThrottled(f.back)
		}
		f.sent = append(f.sent, now)
	}
	return nil
}
