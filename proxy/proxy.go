// Package proxy owns what the IMAP and SMTP fronts share: the local account
// check, the upstream description and strict TLS dialing, the XOAUTH2 and
// PLAIN/LOGIN SASL encodings, and the byte relay.
//
// proxy never imports oauth: main hands each account a TokenSource (and, for
// accounts whose tokens are encrypted with the local password, a Vault)
// through the small interfaces below.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net/netip"
)

// TokenSource gives access tokens for one account. One source is shared by
// every session of the account.
type TokenSource interface {
	// Token returns an access token with most of its life left, refreshing
	// first when needed. Concurrent callers share one refresh.
	Token(ctx context.Context) (string, error)
	// Refresh is called after the upstream refused rejected. It returns a
	// newer token, forcing one refresh unless another caller already
	// replaced rejected.
	Refresh(ctx context.Context, rejected string) (string, error)
}

// Token errors may implement these to tell the fronts what to say.
type (
	// needsSignIn is implemented by errors meaning the account's sign-in is
	// gone (invalid_grant, interaction_required): a person must act.
	needsSignIn interface{ NeedsSignIn() bool }
	// temporary is implemented by errors that may go away by themselves
	// (identity provider unreachable, throttled).
	temporary interface{ Temporary() bool }
	// hinter is implemented by errors that carry one sentence telling the
	// admin what to do (an AADSTS code and its fix). The hint never holds a
	// secret and may be shown to the client.
	hinter interface{ Hint() string }
)

// Upstream says where and how to reach a provider's servers.
type Upstream struct {
	IMAPAddr string      // host:port, implicit TLS
	SMTPAddr string      // host:port; port 465 is implicit TLS, any other STARTTLS
	TLS      *tls.Config // roots (system plus ca_file); ServerName is set per dial
}

// Grant is what a successful local login yields: everything a front needs to
// open the upstream session.
type Grant struct {
	Username string // what the client logged in with
	Mailbox  string // XOAUTH2 user= for IMAP (the shared mailbox, if any)
	Identity string // XOAUTH2 user= for SMTP: who signed in (a delegate for a shared mailbox)
	Tokens   TokenSource
	Upstream *Upstream
}

// Authenticator checks a local login. Implementations return an *AuthError.
type Authenticator interface {
	Authenticate(ctx context.Context, username, password string, remote netip.Addr) (*Grant, error)
}

// Vault opens the token set of an account whose tokens are stored encrypted
// with its local password. It returns ErrBadCredentials when the password
// does not open the entry and ErrNotSignedIn when there is no entry.
type Vault interface {
	Open(ctx context.Context, username, password string) (tokens TokenSource, identity string, err error)
}

var (
	ErrBadCredentials = errors.New("invalid credentials")
	ErrNotSignedIn    = errors.New("account is not signed in")
)

// AuthKind classifies a failed login for the fronts.
type AuthKind int

const (
	// AuthFailed: wrong password or unknown account; the client is told
	// nothing more.
	AuthFailed AuthKind = iota
	// AuthNeedsSignIn: the password is right but the account must be signed
	// in (again) by an admin.
	AuthNeedsSignIn
	// AuthUnavailable: a temporary failure (identity provider or upstream
	// unreachable, throttled); the client should retry later.
	AuthUnavailable
)

// AuthError is a failed login. Msg is safe to send to the client; Err is the
// cause, for the log only.
type AuthError struct {
	Kind AuthKind
	Msg  string
	Err  error
}

func (e *AuthError) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *AuthError) Unwrap() error { return e.Err }

// Metrics receives counts from the fronts for /metrics. Every method must be
// cheap and safe for concurrent use; fronts call them through a nil-safe
// wrapper so a nil Metrics costs nothing.
type Metrics interface {
	ConnOpened(proto string)
	ConnClosed(proto string)
	// Login counts a local login attempt; ok is false for a refused one.
	Login(proto string, ok bool)
	// UpstreamAuthFailed counts an upstream refusing our token (after the
	// retry).
	UpstreamAuthFailed(proto string)
	// Relayed adds bytes moved between client and upstream.
	Relayed(proto string, toUpstream, toClient int64)
	// Message counts an SMTP message the upstream accepted or rejected.
	Message(accepted bool)
	// Session tracks relayed sessions open per account (delta +1 or -1).
	Session(account string, delta int)
}
