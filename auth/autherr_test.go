package auth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
)

// tokenErr is a token source error with the optional behaviours the fronts
// look for.
type tokenErr struct {
	signIn, temp bool
	hint         string
}

func (e *tokenErr) Error() string     { return "refresh failed: refresh_token=SECRET-RT" }
func (e *tokenErr) NeedsSignIn() bool { return e.signIn }
func (e *tokenErr) Temporary() bool   { return e.temp }
func (e *tokenErr) Hint() string      { return e.hint }

// plainHint has a hint and nothing else.
type plainHint string

func (h plainHint) Error() string { return "with hint" }
func (h plainHint) Hint() string  { return string(h) }

func TestTokenAuthError(t *testing.T) {
	const aadsts = "AADSTS70008: the refresh token has expired; sign in again with `mailproxy login alice@x`"
	tests := []struct {
		name string
		err  error
		kind AuthKind
		msg  string
	}{
		{
			name: "needs sign-in with hint",
			err:  fmt.Errorf("token for alice@x: %w", &tokenErr{signIn: true, hint: aadsts}),
			kind: AuthNeedsSignIn,
			msg:  "account alice@x needs a new sign-in by the admin: " + aadsts,
		},
		{
			name: "needs sign-in without hint",
			err:  &tokenErr{signIn: true},
			kind: AuthNeedsSignIn,
			msg:  "account alice@x needs a new sign-in by the admin (mailproxy login alice@x)",
		},
		{
			name: "sign-in behind a wrapper that says no",
			err:  &wrapErr{outer: &tokenErr{}, inner: &tokenErr{signIn: true, hint: "AADSTS50076: MFA needed"}},
			kind: AuthNeedsSignIn,
			msg:  "account alice@x needs a new sign-in by the admin: AADSTS50076: MFA needed",
		},
		{
			name: "temporary with hint",
			err:  &tokenErr{temp: true, hint: "Entra ID is throttling; retry in 30 s"},
			kind: AuthUnavailable,
			msg:  "temporary failure getting a token: Entra ID is throttling; retry in 30 s",
		},
		{
			name: "temporary without hint",
			err:  &tokenErr{temp: true},
			kind: AuthUnavailable,
			msg:  "temporary failure getting a token: try again later",
		},
		{
			name: "network error",
			err:  fmt.Errorf("post token endpoint: %w", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}),
			kind: AuthUnavailable,
			msg:  "temporary failure getting a token: try again later",
		},
		{
			name: "deadline",
			err:  fmt.Errorf("refresh: %w", context.DeadlineExceeded),
			kind: AuthUnavailable,
			msg:  "temporary failure getting a token: try again later",
		},
		{
			name: "os deadline (net.Error)",
			err:  os.ErrDeadlineExceeded,
			kind: AuthUnavailable,
			msg:  "temporary failure getting a token: try again later",
		},
		{
			name: "joined errors",
			err:  errors.Join(errors.New("first"), &tokenErr{temp: true, hint: "IdP down"}),
			kind: AuthUnavailable,
			msg:  "temporary failure getting a token: IdP down",
		},
		{
			name: "hint on an unclassified error",
			err:  plainHint("AADSTS7000215: invalid client secret; fix client_secret"),
			kind: AuthUnavailable,
			msg:  msgTokenFailed,
		},
		{
			name: "unknown",
			err:  errors.New("invalid_client: client_secret=hunter2"),
			kind: AuthUnavailable,
			msg:  msgTokenFailed,
		},
		{
			name: "hint with newlines",
			err:  &tokenErr{signIn: true, hint: "line one\r\n* BYE injected"},
			kind: AuthNeedsSignIn,
			msg:  "account alice@x needs a new sign-in by the admin: line one * BYE injected",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := TokenAuthError("alice@x", tt.err)
			if got == nil {
				t.Fatalf("TokenAuthError(alice@x, %v) = nil", tt.err)
			}
			if got.Kind != tt.kind || got.Msg != tt.msg {
				t.Errorf("TokenAuthError(alice@x, %v) = {%v, %q}, want {%v, %q}", tt.err, got.Kind, got.Msg, tt.kind, tt.msg)
			}
			if !errors.Is(got, tt.err) {
				t.Errorf("TokenAuthError(alice@x, %v) does not wrap the cause", tt.err)
			}
			if strings.Contains(got.Msg, "SECRET") || strings.Contains(got.Msg, "hunter2") {
				t.Errorf("TokenAuthError(alice@x, %v).Msg = %q leaks the cause", tt.err, got.Msg)
			}
		})
	}
	if got := TokenAuthError("alice@x", nil); got != nil {
		t.Errorf("TokenAuthError(alice@x, nil) = %v, want nil", got)
	}
}

// wrapErr wraps inner but is itself another error with the methods.
type wrapErr struct{ outer, inner error }

func (e *wrapErr) Error() string     { return e.outer.Error() }
func (e *wrapErr) NeedsSignIn() bool { return false }
func (e *wrapErr) Unwrap() error     { return e.inner }

func TestClientText(t *testing.T) {
	long := strings.Repeat("é", msgMaxLen)
	tests := []struct{ in, want string }{
		{"plain text", "plain text"},
		{"  lead\tand\r\ntrail  ", "lead and trail"},
		{"nul\x00byte", "nul byte"},
		{"bad \xff utf8", "bad utf8"},
		{long, strings.Repeat("é", msgMaxLen/2)},
	}
	for _, tt := range tests {
		if got := ClientText(tt.in); got != tt.want {
			t.Errorf("ClientText(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

type userHintErr struct{}

func (userHintErr) Error() string     { return "invalid_grant" }
func (userHintErr) NeedsSignIn() bool { return true }
func (userHintErr) Hint() string      { return "run `mailproxy login <user>`" }

func TestTokenAuthErrorNamesTheAccountInTheHint(t *testing.T) {
	ae := TokenAuthError("alice@contoso.com", userHintErr{})
	if !strings.Contains(ae.Msg, "mailproxy login alice@contoso.com") || strings.Contains(ae.Msg, "<user>") {
		t.Errorf("TokenAuthError(alice, hint with <user>).Msg = %q, want the hint naming alice", ae.Msg)
	}
}
