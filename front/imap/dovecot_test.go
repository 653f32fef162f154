package imap

import (
	"bytes"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"mailproxy/auth"
	"mailproxy/internal/dovecot"
	"mailproxy/internal/fake365"
	"mailproxy/internal/testutil"
	"mailproxy/oauth"
	"mailproxy/upstream"
)

// newDovecotEnv is a proxy in front of a real server: a private Dovecot
// 2.3 (internal/dovecot) whose oauth2 passdb asks the fake IdP about the
// XOAUTH2 tokens the proxy sends. alice has an account and a mailbox.
func newDovecotEnv(t *testing.T) (*env, *dovecot.Server) {
	t.Helper()
	if err := dovecot.Available(); err != nil {
		t.Skipf("real-server test skipped: %v", err)
	}
	e := &env{t: t, logs: testutil.NewLogSink(t, ""), tokens: make(map[string]*oauth.Source), upClosed: make(chan struct{}, 1000)}
	var err error
	if e.ca, err = fake365.NewCA(); err != nil {
		t.Fatalf("NewCA() = %v", err)
	}
	if e.idp, err = fake365.NewIdP(); err != nil {
		t.Fatalf("NewIdP() = %v", err)
	}
	t.Cleanup(e.idp.Close)
	e.idp.AddClient(fake365.Client{ID: testClientID})
	dv := dovecot.New(t, e.ca, e.idp, "common")
	e.upstream = &upstream.Upstream{Addr: map[string]string{"imap": dv.IMAPS}, TLS: e.ca.ClientTLS()}
	e.auth = &testAuth{accounts: make(map[string]testAccount)}
	e.idp.AddUser(alice)
	ts := newTokens(e.idp, alice)
	e.tokens[alice] = ts
	e.auth.set(alice, alicePass, &auth.Grant{Username: alice, Mailbox: alice, Identity: alice, Tokens: ts, Upstream: e.upstream})
	e.srv = &Server{
		Auth:   e.auth,
		Logger: e.logs.Logger(),
		Dial:   e.dial,
	}
	e.addr = e.serve(nil)
	return e, dv
}

// imapclient -> mailproxy (LOGIN) -> Dovecot (AUTHENTICATE XOAUTH2 with a
// token from the fake IdP): what a legacy client does, against a real
// server that writes its own 4 KiB TLS records.
func TestDovecotEndToEnd(t *testing.T) {
	e, dv := newDovecotEnv(t)
	seeded := message(3<<20, "seeded")
	if err := dv.Deliver(alice, seeded); err != nil {
		t.Fatal(err)
	}

	c := newIMAPClient(t, e.addr, nil)
	if err := c.Login(alice, alicePass).Wait(); err != nil {
		t.Fatalf("Login() through the proxy to Dovecot = %v\n%s", err, dv.Log())
	}
	// Dovecot's post-login capabilities reached the client.
	if caps := c.Caps(); !caps.Has(imap.CapIdle) || !caps.Has(imap.CapUIDPlus) {
		t.Errorf("Caps() after login = %v, want Dovecot's (IDLE, UIDPLUS)", caps)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("Select(INBOX) = %v", err)
	}
	if sel.NumMessages != 1 {
		t.Fatalf("Select(INBOX).NumMessages = %d, want 1", sel.NumMessages)
	}
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("Fetch(1 BODY.PEEK[]) = %d messages, %v; want 1", len(msgs), err)
	}
	if got := msgs[0].FindBodySection(section); !bytes.Equal(got, seeded) {
		t.Errorf("Fetch(1 BODY.PEEK[]): %d bytes, not the %d delivered", len(got), len(seeded))
	}

	app := message(2<<20, "appended")
	cmd := c.Append("INBOX", int64(len(app)), nil)
	if _, err := cmd.Write(app); err != nil {
		t.Fatalf("Append().Write() = %v", err)
	}
	if err := cmd.Close(); err != nil {
		t.Fatalf("Append().Close() = %v", err)
	}
	data, err := cmd.Wait()
	if err != nil {
		t.Fatalf("Append().Wait() = %v", err)
	}
	msgs, err = c.Fetch(imap.UIDSetNum(data.UID), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("Fetch(UID %d BODY.PEEK[]) = %d messages, %v; want 1", data.UID, len(msgs), err)
	}
	if got := msgs[0].FindBodySection(section); !bytes.Equal(got, app) {
		t.Errorf("the appended message came back as %d bytes, want the %d appended", len(got), len(app))
	}

	// IDLE in a second session: a delivery reaches the client as EXISTS.
	exists := make(chan uint32, 16)
	idler := newIMAPClient(t, e.addr, &imapclient.Options{
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(d *imapclient.UnilateralDataMailbox) {
				if d.NumMessages != nil {
					exists <- *d.NumMessages
				}
			},
		},
	})
	if err := idler.Login(alice, alicePass).Wait(); err != nil {
		t.Fatalf("Login() of the IDLE session = %v", err)
	}
	if _, err := idler.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("Select(INBOX) of the IDLE session = %v", err)
	}
	idle, err := idler.Idle()
	if err != nil {
		t.Fatalf("Idle() = %v", err)
	}
	if err := dv.Deliver(alice, message(2000, "new")); err != nil {
		t.Fatal(err)
	}
	timer := time.NewTimer(testTimeout)
	defer timer.Stop()
	for got := uint32(0); got != 3; {
		select {
		case got = <-exists:
		case <-timer.C:
			t.Fatalf("no * 3 EXISTS within %s of the delivery (IDLE through the proxy)", testTimeout)
		}
	}
	if err := idle.Close(); err != nil {
		t.Fatalf("Idle().Close() = %v", err)
	}
	if err := idle.Wait(); err != nil {
		t.Errorf("Idle().Wait() = %v", err)
	}
	for _, cl := range []*imapclient.Client{idler, c} {
		if err := cl.Logout().Wait(); err != nil {
			t.Errorf("Logout() = %v", err)
		}
	}
}

// A token Dovecot's introspection calls inactive: the proxy refreshes once
// and retries, as it does for Exchange Online, and the login succeeds.
func TestDovecotRefusedTokenIsRefreshed(t *testing.T) {
	e, _ := newDovecotEnv(t)
	c := newIMAPClient(t, e.addr, nil)
	if err := c.Login(alice, alicePass).Wait(); err != nil {
		t.Fatalf("first Login() = %v", err)
	}
	c.Logout().Wait()
	e.idp.ExpireAccessTokens()
	c2 := newIMAPClient(t, e.addr, nil)
	if err := c2.Login(alice, alicePass).Wait(); err != nil {
		t.Fatalf("Login() after the IdP forgot the cached token = %v, want a refresh and success", err)
	}
	c2.Logout().Wait()
}
