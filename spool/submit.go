package spool

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"mailproxy/submit"
	"mailproxy/upstream"
)

// Submitter is one upstream session that messages are submitted through:
// the upstream SMTP client, or Graph (submit.Submitter). Errors the
// upstream answered are *smtp.SMTPError; any other error is a network or
// local failure, after which the session is unusable.
type Submitter = submit.Submitter

// Opener opens an authenticated upstream session for an account.
type Opener func(ctx context.Context, account string) (Submitter, error)

// class is what a failed step means for the queue.
type class int

const (
	classTemp     class = iota // retry the message later (4xx, network)
	classThrottle              // retry later and slow the whole mailbox down
	classMessage               // permanent, about this message or recipient: DSN
	classMailbox               // permanent, about the mailbox: pause it
)

// classify sorts an upstream error. Mailbox-level refusals are those
// Exchange Online answers for the mailbox whatever the message:
// 5.2.251-5.2.255 (continuous error throttling follows repeated ones),
// 5.7.60 (SendAsDenied), 5.7.139 (SMTP AUTH disabled) and 535
// (authentication). Retrying them sends more failures into Exchange's
// throttle, so the mailbox stops instead.
func classify(err error) (class, time.Duration) {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return classTemp, 0
	}
	if d, throttled := throttleDelay(se.Message); throttled {
		return classThrottle, d
	}
	ec := se.EnhancedCode
	switch {
	case se.Code == 535:
		return classMailbox, 0
	case ec[0] == 5 && ec[1] == 2 && ec[2] >= 251 && ec[2] <= 255:
		return classMailbox, 0
	case ec[0] == 5 && ec[1] == 7 && (ec[2] == 60 || ec[2] == 139):
		return classMailbox, 0
	case se.Code >= 500:
		return classMessage, 0
	}
	return classTemp, 0
}

// throttleDelay reads Exchange's "Suggested Backoff Time" (one rule, in
// upstream).
var throttleDelay = upstream.ThrottleDelay

// replyText renders an upstream error as the reply line it was, for the
// delivery log and DSNs: "550 5.1.1 text". Other errors are named as such.
func replyText(err error) string {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return "no reply: " + err.Error()
	}
	s := strconv.Itoa(se.Code)
	if se.EnhancedCode != smtp.NoEnhancedCode && se.EnhancedCode != smtp.EnhancedCodeNotSet {
		ec := se.EnhancedCode
		s += fmt.Sprintf(" %d.%d.%d", ec[0], ec[1], ec[2])
	}
	return s + " " + strings.ReplaceAll(se.Message, "\n", " ")
}

// statusOf is the RFC 3463 status for a DSN: the enhanced code, or one
// made from the basic code.
func statusOf(err error) string {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		ec := se.EnhancedCode
		if ec != smtp.NoEnhancedCode && ec != smtp.EnhancedCodeNotSet && ec[0] >= 2 {
			return fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
		}
		return fmt.Sprintf("%d.0.0", se.Code/100)
	}
	return "4.4.1"
}
