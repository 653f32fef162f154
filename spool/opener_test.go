package spool

import (
	"context"
	"errors"
	"testing"

	"github.com/emersion/go-smtp"
)

type fakeTokens struct {
	tok       string
	refreshed int
}

func (f *fakeTokens) Token(context.Context) (string, error) { return f.tok, nil }
func (f *fakeTokens) Refresh(_ context.Context, rejected string) (string, error) {
	f.refreshed++
	f.tok = rejected + "+"
	return f.tok, nil
}

func TestAccountOpener(t *testing.T) {
	toks := &fakeTokens{tok: "t1"}
	var seen []string
	refuse := map[string]*smtp.SMTPError{
		"t1": {Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"},
	}
	open := AccountOpener(func(_ context.Context, account string) (*Account, error) {
		if account != testMailbox {
			return nil, errors.New("unknown account")
		}
		return &Account{Identity: "delegate@contoso.com", Tokens: toks, Open: func(_ context.Context, id, tok string) (Submitter, error) {
			seen = append(seen, id+" "+tok)
			if e := refuse[tok]; e != nil {
				return nil, e
			}
			return &fakeSession{u: newFakeUpstream(SystemClock{})}, nil
		}}, nil
	})
	if _, err := open(context.Background(), testMailbox); err != nil {
		t.Fatalf("open = %v", err)
	}
	if toks.refreshed != 1 || len(seen) != 2 || seen[1] != "delegate@contoso.com t1+" {
		t.Errorf("refreshed %d, opens %v; want one refresh and a second try with the new token", toks.refreshed, seen)
	}
	// 5.7.139 is not a token problem: no refresh, the refusal comes back
	// (and pauses the mailbox).
	toks.tok, seen = "t2", nil
	refuse["t2"] = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "SmtpClientAuthentication is disabled"}
	_, err := open(context.Background(), testMailbox)
	if c, _ := classify(err); c != classMailbox || len(seen) != 1 {
		t.Errorf("open with SMTP AUTH disabled = %v after %d tries, want a mailbox-level refusal after 1", err, len(seen))
	}
	if _, err := open(context.Background(), "other@contoso.com"); err == nil {
		t.Error("an unknown account opened")
	}
}
