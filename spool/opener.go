package spool

import (
	"context"
	"errors"
	"fmt"

	"github.com/emersion/go-smtp"

	"mailproxy/submit"
)

// TokenSource is an account's access tokens (oauth.Source, or the app-only
// source of client_credentials accounts).
type TokenSource interface {
	Token(ctx context.Context) (string, error)
	// Refresh is called after the upstream refused rejected.
	Refresh(ctx context.Context, rejected string) (string, error)
}

// UpstreamOpener opens an authenticated upstream session for identity
// (the XOAUTH2 user=, or Graph's mailbox) with an access token: the
// account's send_via (smtpclient, or Graph).
type UpstreamOpener = submit.Opener

// Account is what the workers need to reach the upstream for an account.
type Account struct {
	Identity string // XOAUTH2 user=: the mailbox, or the delegate who signed in
	Tokens   TokenSource
	Open     UpstreamOpener
}

// AccountOpener builds the workers' Opener from the daemon's accounts:
// lookup returns an account's tokens and upstream. A token the upstream
// refuses (535 other than 5.7.139, which means SMTP AUTH is off) is
// refreshed once and tried again, as the front does; a second refusal is
// returned, and pauses the mailbox.
func AccountOpener(lookup func(ctx context.Context, account string) (*Account, error)) Opener {
	return func(ctx context.Context, account string) (Submitter, error) {
		a, err := lookup(ctx, account)
		if err != nil {
			return nil, fmt.Errorf("account %s: %w", account, err)
		}
		tok, err := a.Tokens.Token(ctx)
		if err != nil {
			return nil, fmt.Errorf("access token for %s: %w", account, err)
		}
		sub, err := a.Open(ctx, a.Identity, tok)
		if se := (*smtp.SMTPError)(nil); errors.As(err, &se) && tokenRefused(se) {
			if tok, err = a.Tokens.Refresh(ctx, tok); err != nil {
				return nil, fmt.Errorf("refresh the refused access token for %s: %w", account, err)
			}
			sub, err = a.Open(ctx, a.Identity, tok)
		}
		return sub, err
	}
}

func tokenRefused(se *smtp.SMTPError) bool {
	return se.Code == 535 && se.EnhancedCode != (smtp.EnhancedCode{5, 7, 139})
}
