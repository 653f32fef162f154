// Package proxy owns what the IMAP and SMTP fronts share: the local account
// check, the upstream description and strict TLS dialing, the XOAUTH2 and
// PLAIN/LOGIN SASL encodings, and the byte relay.
//
// proxy never imports oauth: main hands each account a TokenSource (and, for
// accounts whose tokens are encrypted with the local password, a Vault)
// through the small interfaces below.
package auth

import (
	"context"
	"mailproxy/upstream"
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

// Grant is what a successful local login yields: everything a front needs to
// open the upstream session.
type Grant struct {
	Username string // what the client logged in with
	Mailbox  string // XOAUTH2 user= for IMAP: the shared mailbox, or the username; always set (grantFor)
	Identity string // XOAUTH2 user= for SMTP: who signed in (a delegate for a shared mailbox)
	Tokens   TokenSource
	Upstream *upstream.Upstream
}

// Authenticator checks a local login. Implementations return an *AuthError.
type Authenticator interface {
	Authenticate(ctx context.Context, username, password string, remote netip.Addr) (*Grant, error)
}

// Vault opens the token set of an account whose tokens are stored encrypted
// with its local password. Its errors are recognised by behaviour, so that
// a vault need not import this package: an error in the chain with a
// BadCredentials() method returning true means the password does not open
// the entry, one with NotSignedIn() true that there is no entry.
// ErrBadCredentials and ErrNotSignedIn are such errors.
type Vault interface {
	Open(ctx context.Context, username, password string) (tokens TokenSource, identity string, err error)
}

// VaultOf makes a Vault of an Open method returning a concrete token
// source type (oauth.Manager's), which cannot satisfy Vault itself without
// importing this package. open must not return a nil source with a nil
// error.
func VaultOf[T TokenSource](open func(ctx context.Context, username, password string) (T, string, error)) Vault {
	return vaultFunc(func(ctx context.Context, username, password string) (TokenSource, string, error) {
		src, id, err := open(ctx, username, password)
		if err != nil {
			return nil, "", err
		}
		return src, id, nil
	})
}

type vaultFunc func(ctx context.Context, username, password string) (TokenSource, string, error)

func (f vaultFunc) Open(ctx context.Context, username, password string) (TokenSource, string, error) {
	return f(ctx, username, password)
}

var (
	ErrBadCredentials error = &vaultError{"invalid credentials", true}
	ErrNotSignedIn    error = &vaultError{"account is not signed in", false}
)

// vaultError is a Vault error recognised by behaviour (see Vault).
type vaultError struct {
	msg string
	bad bool // BadCredentials, else NotSignedIn
}

func (e *vaultError) Error() string        { return e.msg }
func (e *vaultError) BadCredentials() bool { return e.bad }
func (e *vaultError) NotSignedIn() bool    { return !e.bad }

// isBadCredentials and isNotSignedIn recognise Vault errors by behaviour.
func isBadCredentials(err error) bool {
	return anyInChain(err, func(e error) bool {
		b, ok := e.(interface{ BadCredentials() bool })
		return ok && b.BadCredentials()
	})
}

func isNotSignedIn(err error) bool {
	return anyInChain(err, func(e error) bool {
		n, ok := e.(interface{ NotSignedIn() bool })
		return ok && n.NotSignedIn()
	})
}

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
