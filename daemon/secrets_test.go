package daemon

import (
	"context"
	"encoding/base64"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"mailproxy/auth"
	imapfront "mailproxy/front/imap"
	smtpfront "mailproxy/front/smtp"
	"mailproxy/internal/fake365"
	"mailproxy/internal/testutil"
	"mailproxy/oauth"
	"mailproxy/oauth/store"
	"mailproxy/upstream"
)

// secretsTimeout bounds every blocking step of TestNoSecretsAnywhere.
const secretsTimeout = 20 * time.Second

func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// recorded wraps ts so that every token it hands out is recorded, with
// the refresh token behind it when ts is an *oauth.Source.
func recorded(ts auth.TokenSource, secrets *testutil.Secrets) testutil.RecordingTokens {
	r := testutil.RecordingTokens{Src: ts, Secrets: secrets}
	if src, ok := ts.(*oauth.Source); ok {
		r.RefreshToken = func() string { return src.Tokens().RefreshToken }
	}
	return r
}

// recordingVault wraps the token sources the vault opens.
type recordingVault struct {
	v       *oauth.Manager
	secrets *testutil.Secrets
	mu      sync.Mutex // protects sources
	sources []*oauth.Source
}

func (r *recordingVault) Open(ctx context.Context, username, password string) (auth.TokenSource, string, error) {
	src, id, err := r.v.Open(ctx, username, password)
	if err != nil {
		return nil, id, err
	}
	r.mu.Lock()
	r.sources = append(r.sources, src)
	r.mu.Unlock()
	return recorded(src, r.secrets), id, nil
}

// A whole run, IMAP and SMTP, with successful and failed logins, token
// refreshes, an identity provider failure and a revoked sign-in: no
// password, access token, refresh token or client secret appears in any log
// line, in any reply a client received, or in clear text in any file the run
// wrote.
func TestNoSecretsAnywhere(t *testing.T) {
	const (
		clientID     = "33333333-4444-5555-6666-777777777777"
		clientSecret = "Zq8~cl1ent-S3cret.value_only-in-config-4711"
		alice        = "alice@contoso.com"
		alicePass    = "Alice-Pw-9f3K!unique"
		scanner      = "scanner@contoso.com"
		scannerPass  = "Scanner-Pw-77Lq#unique"
		wrongPass    = "Wrong-Pw-but-still-a-secret-1x"
	)
	secrets := testutil.NewSecrets()
	for _, s := range []string{clientSecret, alicePass, scannerPass, wrongPass} {
		secrets.Add("given", s)
	}
	logs := fake365.NewCapture()
	var finished atomic.Bool
	defer finished.Store(true)
	logs.Tee = func(l string) {
		if !finished.Load() {
			t.Log(l)
		}
	}
	logger := logs.Logger()
	replies := fake365.NewCapture()

	ca, err := fake365.NewCA()
	if err != nil {
		t.Fatalf("NewCA() = %v", err)
	}
	idp, err := fake365.NewIdP()
	if err != nil {
		t.Fatalf("NewIdP() = %v", err)
	}
	defer idp.Close()
	idp.AddClient(fake365.Client{ID: clientID, Secret: clientSecret})
	idp.AddUser(alice)
	idp.AddUser(scanner)
	upTLS, err := ca.ServerTLS()
	if err != nil {
		t.Fatalf("ServerTLS() = %v", err)
	}
	imapUp, err := fake365.NewIMAPUpstream(idp, upTLS)
	if err != nil {
		t.Fatalf("NewIMAPUpstream() = %v", err)
	}
	defer imapUp.Close()
	imapUp.AddMailbox(alice)
	imapUp.AddMailbox(scanner)
	smtpUp, err := fake365.NewSMTPUpstream(idp, upTLS, false)
	if err != nil {
		t.Fatalf("NewSMTPUpstream() = %v", err)
	}
	defer smtpUp.Close()

	scopes := []string{"https://outlook.office.com/IMAP.AccessAsUser.All", "https://outlook.office.com/SMTP.Send", "offline_access"}
	_, tokenURL, _ := idp.Endpoints("contoso.onmicrosoft.com")
	p := &oauth.Provider{Name: "contoso", ClientID: clientID, ClientSecret: clientSecret, TokenURL: tokenURL, Scopes: scopes}
	upstream := &upstream.Upstream{Addr: map[string]string{"imap": imapUp.Addr, "smtp": smtpUp.Addr}, TLS: ca.ClientTLS()}

	// alice: tokens sealed in the store with her password (the vault).
	stateDir := t.TempDir()
	st, err := store.Open(filepath.Join(stateDir, "tokens"))
	if err != nil {
		t.Fatalf("store.Open() = %v", err)
	}
	st.KDF = store.Params{Time: 1, Memory: 64, Threads: 1}
	m := oauth.NewManager(st, logger.With("component", "oauth"))
	m.SetAccount(oauth.Account{Username: alice, Flow: "authcode", Provider: p})
	aliceRT := idp.GrantRefreshToken(clientID, alice, scopes)
	secrets.Add("refresh token", aliceRT)
	if err := m.Seal(alice, alicePass, oauth.TokenSet{RefreshToken: aliceRT, Scopes: scopes}, store.Meta{Identity: alice, Flow: "authcode"}); err != nil {
		t.Fatalf("Seal() = %v", err)
	}
	vault := &recordingVault{v: m, secrets: secrets}

	// scanner: a password hash and its own token source.
	scannerRT := idp.GrantRefreshToken(clientID, scanner, scopes)
	secrets.Add("refresh token", scannerRT)
	scannerSrc := oauth.NewSource(p, oauth.TokenSet{RefreshToken: scannerRT, Scopes: scopes}, nil, logger.With("account", scanner))
	accounts := auth.NewAccounts([]auth.AccountSpec{
		{Username: alice, Upstream: upstream},
		{Username: scanner, PasswordHash: testutil.CheapPHC(t, scannerPass), Tokens: recorded(scannerSrc, secrets), Upstream: upstream},
	}, vault)
	lo := auth.NewLockout(5, time.Minute, time.Minute)
	lo.Sleep = func(ctx context.Context, d time.Duration) error { return ctx.Err() }
	accounts.SetLockout(lo)

	imapSrv := &imapfront.Server{Auth: accounts, Logger: logger.With("front", "imap"), Trace: logger.With("front", "imap", "trace", true), UpstreamTimeout: 5 * time.Second}
	smtpSrv := &smtpfront.Server{Auth: accounts, Logger: logger.With("front", "smtp"), Domain: "proxy.test", UpstreamTimeout: 5 * time.Second}
	imapLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen() = %v", err)
	}
	smtpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen() = %v", err)
	}
	go imapSrv.Serve(imapLn)
	go smtpSrv.Serve(smtpLn)
	var clients []interface{ Close() error }
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		for _, c := range clients {
			c.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), secretsTimeout)
		defer cancel()
		imapSrv.Shutdown(ctx)
		imapSrv.Close()
		smtpSrv.Shutdown(ctx)
		smtpSrv.Close()
	}
	defer stop()

	imapClient := func() *testutil.LineClient {
		t.Helper()
		conn, err := net.DialTimeout("tcp", imapLn.Addr().String(), secretsTimeout)
		if err != nil {
			t.Fatalf("Dial() = %v", err)
		}
		clients = append(clients, conn)
		conn.SetDeadline(time.Now().Add(secretsTimeout))
		cc := replies.Conn(conn)
		c := testutil.NewLineClient(t, cc)
		c.Expect("* OK")
		return c
	}
	smtpClient := func() *smtp.Client {
		t.Helper()
		conn, err := net.DialTimeout("tcp", smtpLn.Addr().String(), secretsTimeout)
		if err != nil {
			t.Fatalf("Dial() = %v", err)
		}
		c := smtp.NewClient(replies.Conn(conn))
		clients = append(clients, c)
		if err := c.Hello("client.test"); err != nil {
			t.Fatalf("Hello() = %v", err)
		}
		return c
	}
	imapLogin := func(c *testutil.LineClient, tag, user, pass, want string) {
		t.Helper()
		c.Send(tag + " LOGIN " + quote(user) + " " + quote(pass) + "\r\n")
		if reply, _ := c.UntilTagged(tag); !strings.HasPrefix(reply, tag+" "+want) {
			t.Errorf("LOGIN %s = %q, want %s", user, reply, want)
		}
	}
	sendMail := func(c *smtp.Client, from string) error {
		t.Helper()
		if err := c.Mail(from, nil); err != nil {
			return err
		}
		if err := c.Rcpt("bob@example.com", nil); err != nil {
			return err
		}
		w, err := c.Data()
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "From: %s\r\nSubject: hi\r\n\r\nhello\r\n", from)
		return w.Close()
	}

	// IMAP: a wrong password, LOGIN, AUTHENTICATE PLAIN and LOGIN.
	c := imapClient()
	imapLogin(c, "a", alice, wrongPass, "NO")
	imapLogin(c, "b", alice, alicePass, "OK")
	c.Send("c SELECT INBOX\r\nd LOGOUT\r\n")
	c.UntilTagged("d")
	c = imapClient()
	c.Send("a AUTHENTICATE PLAIN " + b64("\x00"+scanner+"\x00"+scannerPass) + "\r\n")
	if reply, _ := c.UntilTagged("a"); !strings.HasPrefix(reply, "a OK") {
		t.Errorf("AUTHENTICATE PLAIN = %q, want OK", reply)
	}
	c = imapClient()
	c.Send("a AUTHENTICATE LOGIN\r\n")
	c.Expect("+ ")
	c.Send(b64(alice) + "\r\n")
	c.Expect("+ ")
	c.Send(b64(alicePass) + "\r\n")
	if reply, _ := c.UntilTagged("a"); !strings.HasPrefix(reply, "a OK") {
		t.Errorf("AUTHENTICATE LOGIN = %q, want OK", reply)
	}

	// SMTP: a wrong password, AUTH PLAIN and LOGIN, a message each.
	sc := smtpClient()
	if err := sc.Auth(sasl.NewPlainClient("", alice, wrongPass)); err == nil {
		t.Errorf("AUTH PLAIN with a wrong password succeeded")
	}
	sc = smtpClient()
	if err := sc.Auth(sasl.NewPlainClient("", alice, alicePass)); err != nil {
		t.Fatalf("AUTH PLAIN = %v", err)
	}
	if err := sendMail(sc, alice); err != nil {
		t.Errorf("send as alice = %v", err)
	}
	sc = smtpClient()
	if err := sc.Auth(sasl.NewLoginClient(scanner, scannerPass)); err != nil {
		t.Fatalf("AUTH LOGIN = %v", err)
	}
	if err := sendMail(sc, scanner); err != nil {
		t.Errorf("send as scanner = %v", err)
	}

	// Tokens the upstream no longer takes: refresh and retry.
	idp.ExpireAccessTokens()
	c = imapClient()
	imapLogin(c, "a", alice, alicePass, "OK")
	sc = smtpClient()
	if err := sc.Auth(sasl.NewPlainClient("", scanner, scannerPass)); err != nil {
		t.Fatalf("AUTH PLAIN = %v", err)
	}
	if err := sendMail(sc, scanner); err != nil {
		t.Errorf("send after a refresh = %v", err)
	}

	// The identity provider fails: alice's next forced refresh is refused
	// with the reason.
	idp.SetFailure(&fake365.Failure{Status: 500, Code: "server_error"})
	idp.ExpireAccessTokens()
	c = imapClient()
	imapLogin(c, "a", alice, alicePass, "NO [UNAVAILABLE]")
	idp.SetFailure(nil)

	// scanner's sign-in is revoked: it needs a new one.
	idp.Revoke(scanner)
	idp.ExpireAccessTokens()
	sc = smtpClient()
	if err := sc.Auth(sasl.NewPlainClient("", scanner, scannerPass)); err != nil {
		t.Fatalf("AUTH PLAIN = %v", err)
	}
	if err := sendMail(sc, scanner); err == nil {
		t.Errorf("send with a revoked sign-in succeeded")
	}

	stop()
	secrets.Add("refresh token", scannerSrc.Tokens().RefreshToken)
	secrets.Add("access token", scannerSrc.Tokens().AccessToken)
	vault.mu.Lock()
	for _, src := range vault.sources {
		secrets.Add("refresh token", src.Tokens().RefreshToken)
		secrets.Add("access token", src.Tokens().AccessToken)
	}
	vault.mu.Unlock()

	all := secrets.All()
	var tokens int
	for k := range all {
		if strings.HasPrefix(k, "access token") {
			tokens++
		}
	}
	if tokens < 4 {
		t.Errorf("the run handed out %d access tokens, want at least 4 (two accounts, refreshed)", tokens)
	}
	if leaks := logs.Leaks(all); len(leaks) > 0 {
		t.Errorf("log contains secrets: %q", leaks)
	}
	if leaks := replies.Leaks(all); len(leaks) > 0 {
		t.Errorf("replies to clients contain secrets: %q", leaks)
	}
	if !strings.Contains(logs.String(), `msg="auth failure"`) || !strings.Contains(replies.String(), "needs a new sign-in") {
		t.Errorf("the run did not go through the failures it is meant to (auth failure logged, sign-in needed)")
	}
	// Files: the store's entries hold the tokens sealed, nothing in clear.
	filepath.WalkDir(stateDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("ReadFile(%s) = %v", path, err)
			return nil
		}
		fc := fake365.NewCapture()
		fc.Write(b)
		if leaks := fc.Leaks(all); len(leaks) > 0 {
			t.Errorf("file %s contains secrets in clear text: %q", path, leaks)
		}
		return nil
	})
}
