package graph

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode"

	"github.com/emersion/go-smtp"
)

// replyMaxLen keeps a reply's text well inside SMTP's line limit.
const replyMaxLen = 400

// reply turns the outcome of Send into what the SMTP client is told; nil
// stays nil (250). The cause is logged here, once.
func (s *Sender) reply(err error) error {
	if err == nil {
		return nil
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		s.log.Warn("message refused", "code", se.Code, "reply", se.Message)
		return se
	}
	r := s.replyFor(err)
	s.log.Warn("message not sent", "err", err, "code", r.Code)
	return r
}

func (s *Sender) replyFor(err error) *smtp.SMTPError {
	var te *TokenError
	if errors.As(err, &te) {
		return s.tokenReply(te.Err)
	}
	if errors.Is(err, errClientData) {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Message data incomplete; nothing was sent"}
	}
	if errors.Is(err, errLocalStorage) {
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Insufficient local storage for the message; nothing was sent, try again later"}
	}
	if errors.Is(err, errTooLarge) {
		return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
			Message: fmt.Sprintf("Message too large (Graph takes at most %d MB)", s.opts.MaxMessageBytes>>20)}
	}
	var ge *Error
	if !errors.As(err, &ge) {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errTransport) || isNetErr(err) {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 1}, Message: "Microsoft Graph did not answer in time; try again later"}
		}
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Local error sending through Microsoft Graph; the admin should check the proxy log"}
	}
	text := "Graph " + ge.Code + ": " + ge.Message
	switch {
	case ge.Code == "ErrorSendAsDenied":
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 60}, Message: clean(text + " (the From address must be the mailbox or one it has Send As rights on)")}
	case ge.Status == http.StatusRequestEntityTooLarge || ge.Code == "ErrorMessageSizeExceeded" || strings.Contains(ge.Code, "SizeShouldNotBeGreater"):
		return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: clean(text)}
	case retryable(ge.Status):
		msg := text
		if ge.RetryAfter > 0 {
			// Exchange's own wording, which the spool reads to pause the
			// mailbox for that long.
			msg += fmt.Sprintf(" (retry after %d s; Suggested Backoff Time: %d milliseconds)", int(ge.RetryAfter.Seconds()+0.5), ge.RetryAfter.Milliseconds())
		}
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 500}, Message: clean(msg)}
	case ge.Status == http.StatusUnauthorized:
		return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3},
			Message: clean(text + "; check the app's Graph permissions and admin consent, or sign in again: mailproxy login " + s.opts.Username)}
	case ge.Status == http.StatusForbidden:
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
			Message: clean(text + " (the app needs Mail.Send, and Mail.ReadWrite for drafts, for this mailbox)")}
	case ge.Status == http.StatusNotFound:
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 8}, Message: clean(text + " (is the mailbox " + s.mailbox + " right?)")}
	case ge.Code == "ErrorInvalidRecipients":
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: clean(text)}
	case ge.Status >= 500:
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: clean(text)}
	}
	return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: clean(text)}
}

// tokenReply explains a token source failure: 535 when the account needs
// a new sign-in, 454 when it may pass.
func (s *Sender) tokenReply(err error) *smtp.SMTPError {
	hint := ""
	var h interface{ Hint() string }
	if errors.As(err, &h) {
		hint = strings.ReplaceAll(h.Hint(), "<user>", s.opts.Username)
	}
	var ns interface{ NeedsSignIn() bool }
	if errors.As(err, &ns) && ns.NeedsSignIn() {
		msg := "account " + s.opts.Username + " needs a new sign-in by the admin"
		if hint != "" {
			msg += ": " + hint
		} else {
			msg += " (mailproxy login " + s.opts.Username + ")"
		}
		return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: clean(msg)}
	}
	msg := "temporary failure getting a Graph token"
	if hint != "" {
		msg += ": " + hint
	} else {
		msg += "; try again later"
	}
	return &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: clean(msg)}
}

func isNetErr(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne)
}

// clean makes text one printable line of bounded length.
func clean(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == '\t' {
			return ' '
		}
		if !unicode.IsPrint(r) || r > unicode.MaxASCII {
			return -1
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > replyMaxLen {
		s = s[:replyMaxLen-3] + "..."
	}
	return s
}
