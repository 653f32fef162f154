package auth

import (
	"context"
	"errors"
	"net"
	"strings"
	"unicode"
	"unicode/utf8"

	"mailproxy/internal/cmdline"
)

// Client-facing texts. They go into IMAP response text and SMTP replies, so
// they stay one line and never carry a secret.
const (
	msgInvalidCredentials = "invalid credentials"
	msgTokenTemporary     = "temporary failure getting a token"
	msgTokenFailed        = "cannot get a token for the mail server; the admin should check the proxy log"
	msgTryLater           = "try again later"
	msgMaxLen             = 400 // keeps a reply well inside IMAP and SMTP line limits
)

// TokenAuthError classifies an error from a TokenSource (or a Vault) for
// the account username:
//
//   - an error in the chain whose NeedsSignIn() is true: AuthNeedsSignIn,
//     "account U needs a new sign-in by the admin: HINT";
//   - Temporary() true, a net.Error or context.DeadlineExceeded:
//     AuthUnavailable, "temporary failure getting a token: HINT" (or "try
//     again later");
//   - anything else: AuthUnavailable with a generic text.
//
// HINT is the Hint() of the first error in the chain that has one. Msg is
// one line without control characters; err is kept as the cause for the
// log. It returns nil for a nil err.
func TokenAuthError(username string, err error) *AuthError {
	if err == nil {
		return nil
	}
	hint := cmdline.Expand(errorHint(err), username)
	switch {
	case anyInChain(err, func(e error) bool {
		ns, ok := e.(needsSignIn)
		return ok && ns.NeedsSignIn()
	}):
		msg := "account " + username + " needs a new sign-in by the admin"
		if hint != "" {
			msg += ": " + hint
		} else {
			msg += " (" + cmdline.Login(username) + ")"
		}
		return &AuthError{Kind: AuthNeedsSignIn, Msg: ClientText(msg), Err: err}
	case isTemporary(err):
		if hint == "" {
			hint = msgTryLater
		}
		return &AuthError{Kind: AuthUnavailable, Msg: ClientText(msgTokenTemporary + ": " + hint), Err: err}
	default:
		return &AuthError{Kind: AuthUnavailable, Msg: msgTokenFailed, Err: err}
	}
}

// isTemporary reports whether err may go away by itself.
func isTemporary(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	return anyInChain(err, func(e error) bool {
		t, ok := e.(temporary)
		return ok && t.Temporary()
	})
}

// errorHint returns the first non-empty Hint() in err's chain. Hints name
// the account as "<user>"; callers put the username in.
func errorHint(err error) string {
	var hint string
	anyInChain(err, func(e error) bool {
		if h, ok := e.(hinter); ok {
			hint = strings.TrimSpace(h.Hint())
		}
		return hint != ""
	})
	return hint
}

// anyInChain reports whether f is true for err or any error it wraps
// (depth first, like errors.As). Unlike errors.As it does not stop at the
// first error of the right type, so a wrapper answering NeedsSignIn() false
// does not hide a cause answering true.
func anyInChain(err error, f func(error) bool) bool {
	for err != nil {
		if f(err) {
			return true
		}
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				if anyInChain(e, f) {
					return true
				}
			}
			return false
		default:
			return false
		}
	}
	return false
}

// ClientText makes s safe for a one-line protocol reply: control characters
// (CR and LF above all) become spaces, runs of spaces collapse, and the text
// is cut at msgMaxLen (400) bytes, on a character boundary. It is the one
// sanitizer of text a client sees: the AuthErrors auth makes carry their
// Msg through it, and the fronts use it for any other text (an upstream's
// reply) that goes to a client.
func ClientText(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	space := false
	for _, r := range s {
		if unicode.IsControl(r) || unicode.IsSpace(r) || r == unicode.ReplacementChar {
			space = true
			continue
		}
		if space && b.Len() > 0 {
			b.WriteByte(' ')
		}
		space = false
		if b.Len()+utf8.RuneLen(r) > msgMaxLen {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}
