package admin

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/emersion/go-imap/v2/imapclient"

	"mailproxy/auth"
	imapfront "mailproxy/front/imap"
	"mailproxy/internal/fake365"
	"mailproxy/oauth"
	"mailproxy/oauth/store"
	"mailproxy/upstream"
)

// browserTimeout bounds the whole browser test.
const browserTimeout = 30 * time.Second

// chromium returns the path of a Chromium binary, or skips the test.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("MAILPROXY_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no Chromium binary found (install Debian's chromium package, or set MAILPROXY_CHROMIUM): browser test skipped")
	return ""
}

// TestBrowserSignIn drives headless Chromium through the whole stack: the
// admin page over a real oauth.Manager and token store, the fake IdP, the
// IMAP front over auth.Accounts with the Manager as its vault, and the
// fake IMAP upstream. The admin clicks "Sign in", the fake IdP sends the
// browser back, the admin sets the local password, the account turns
// "signed in", and an IMAP client logs in with that password.
func TestBrowserSignIn(t *testing.T) {
	exe := chromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), browserTimeout)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))

	// Identity provider and IMAP upstream.
	ca, err := fake365.NewCA()
	if err != nil {
		t.Fatalf("NewCA() = %v", err)
	}
	idp, err := fake365.NewIdP()
	if err != nil {
		t.Fatalf("NewIdP() = %v", err)
	}
	t.Cleanup(idp.Close)
	idp.AddClient(fake365.Client{ID: testClientID, Secret: testClientSecret, RedirectURIs: []string{"http://127.0.0.1/oauth2/callback"}})
	idp.AddUser(alice)
	idp.SignInAs(alice)
	upTLS, err := ca.ServerTLS()
	if err != nil {
		t.Fatalf("ServerTLS() = %v", err)
	}
	up, err := fake365.NewIMAPUpstream(idp, upTLS)
	if err != nil {
		t.Fatalf("NewIMAPUpstream() = %v", err)
	}
	t.Cleanup(func() { up.Close() })
	up.AddMailbox(alice)
	if err := up.Append(alice, "INBOX", []byte("From: bob@example.com\r\nSubject: hello\r\n\r\nhi\r\n")); err != nil {
		t.Fatalf("Append() = %v", err)
	}

	// Token store and Manager, as serve builds them.
	st, err := store.Open(filepath.Join(t.TempDir(), "tokens"))
	if err != nil {
		t.Fatalf("store.Open() = %v", err)
	}
	st.KDF = store.Params{Time: 1, Memory: 64, Threads: 1}
	mgr := oauth.NewManager(st, logger)
	authURL, tokenURL, deviceURL := idp.Endpoints("organizations")
	prov := &oauth.Provider{Name: "contoso", ClientID: testClientID, ClientSecret: testClientSecret,
		AuthURL: authURL, TokenURL: tokenURL, DeviceAuthURL: deviceURL, Scopes: testScopes}
	mgr.SetAccount(oauth.Account{Username: alice, Flow: "authcode", Provider: prov})
	mgr.SetAccount(oauth.Account{Username: bob, Flow: "device", Provider: prov})

	// IMAP front.
	accounts := auth.NewAccounts([]auth.AccountSpec{{
		Username: alice,
		Upstream: &upstream.Upstream{Addr: map[string]string{"imap": up.Addr}, TLS: ca.ClientTLS()},
	}}, auth.VaultOf(mgr.Open))
	front := &imapfront.Server{Auth: accounts, Logger: logger.With("proto", "imap")}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen() = %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- front.Serve(ln) }()
	t.Cleanup(func() {
		front.Close()
		if err := <-served; !errors.Is(err, imapfront.ErrServerClosed) {
			t.Errorf("imap Serve() = %v, want %v", err, imapfront.ErrServerClosed)
		}
	})

	// Admin page, with the redirect URL on its own listener.
	var handler http.Handler
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handler.ServeHTTP(w, r) }))
	base := "http://" + ts.Listener.Addr().String()
	bodies := &bodyLog{}
	srv, err := New(Options{
		Accounts: func() []AccountInfo {
			return []AccountInfo{
				{Username: alice, Provider: "contoso", Flow: "authcode"},
				{Username: bob, Provider: "contoso", Flow: "device"},
				{Username: printer, Mailbox: "scans@example.com", Provider: "contoso", Flow: FlowClientCredentials},
			}
		},
		Status:      mgr.Status,
		Seal:        mgr.Seal,
		Remove:      st.Remove,
		Provider:    func(string) *oauth.Provider { return prov },
		RedirectURL: base + "/oauth2/callback",
		AccessToken: testAccessToken,
		Logger:      logger,
	})
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	handler = bodies.wrap(srv)
	ts.Start()
	t.Cleanup(ts.Close)
	if got := mgr.Status(alice); got.SignedIn {
		t.Fatalf("alice signed in before the test")
	}

	// Headless Chromium with a fresh profile.
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("password-store", "basic"),
		chromedp.WindowSize(1280, 900),
	)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf))
	defer cancelBrowser()

	const localPW = "browser-pw-DO-NOT-SHOW-4c2d"
	signedIn := chromedp.CSS(`tr[id="account-alice@example.com"] span[data-state="signed in"]`)
	if err := chromedp.Do(bctx,
		// The link `mailproxy admin-url` prints.
		chromedp.Navigate(base+"/?token="+testAccessToken),
		chromedp.WaitVisible(chromedp.CSS(`tr[id="account-alice@example.com"] span[data-state="needs sign-in"]`)),
		chromedp.Click(chromedp.CSS(`button[aria-label="Sign in alice@example.com"]`)),
		// The fake IdP signs alice in and redirects back to the callback,
		// which asks for the local password.
		chromedp.WaitVisible(chromedp.ID("password2")),
	); err != nil {
		t.Fatalf("browser: sign in and come back to the password form: %v", err)
	}
	loc, err := chromedp.Run(bctx, chromedp.Location())
	if err != nil {
		t.Fatalf("browser: Location() = %v", err)
	}
	if u := mustURL(t, loc); u.Path != "/oauth2/callback" {
		t.Errorf("browser is at %s after the IdP, want /oauth2/callback", loc)
	}
	if err := chromedp.Do(bctx,
		chromedp.SendKeys(chromedp.ID("password"), localPW),
		chromedp.SendKeys(chromedp.ID("password2"), localPW),
		chromedp.Click(chromedp.CSS(`form[action="/password"] button[type=submit]`)),
		chromedp.WaitVisible(signedIn),
	); err != nil {
		t.Fatalf("browser: set the password and see alice signed in: %v", err)
	}
	shot, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("browser: FullScreenshot() = %v", err)
	}
	// Screenshots go to the test's temporary directory, or to
	// $MAILPROXY_SCREENSHOTS (kept, e.g. as CI artifacts).
	dir := t.TempDir()
	if d := os.Getenv("MAILPROXY_SCREENSHOTS"); d != "" {
		dir = d
	}
	path := filepath.Join(dir, "admin-signed-in.png")
	if err := os.WriteFile(path, shot, 0o600); err != nil {
		t.Fatalf("write screenshot: %v", err)
	}
	t.Logf("screenshot: %s", path)
	// The same page on a phone: rows become cards.
	if err := chromedp.Do(bctx, chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2)), chromedp.WaitVisible(signedIn)); err != nil {
		t.Fatalf("browser: phone viewport: %v", err)
	}
	if shot, err = chromedp.Run(bctx, chromedp.FullScreenshot(100)); err != nil {
		t.Fatalf("browser: FullScreenshot() on a phone = %v", err)
	}
	phone := filepath.Join(dir, "admin-phone.png")
	if err := os.WriteFile(phone, shot, 0o600); err != nil {
		t.Fatalf("write screenshot: %v", err)
	}
	t.Logf("phone screenshot: %s", phone)

	if st := mgr.Status(alice); !st.SignedIn || st.Identity != alice || st.NeedsSignIn {
		t.Errorf("Manager.Status(%s) = %+v, want signed in as %s", alice, st, alice)
	}

	// An IMAP client logs in through the proxy with the password.
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial the IMAP front: %v", err)
	}
	c := imapclient.New(conn, nil)
	defer c.Close()
	if err := c.Login(alice, "wrong").Wait(); err == nil {
		t.Errorf("IMAP Login() with a wrong password = nil, want an error")
	}
	if err := c.Login(alice, localPW).Wait(); err != nil {
		t.Fatalf("IMAP Login() with the password set in the browser = %v", err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("IMAP Select(INBOX) = %v", err)
	}
	if sel.NumMessages != 1 {
		t.Errorf("IMAP Select(INBOX).NumMessages = %d, want 1", sel.NumMessages)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Errorf("IMAP Logout() = %v", err)
	}
	if up.Logins() != 1 {
		t.Errorf("upstream XOAUTH2 logins = %d, want 1", up.Logins())
	}
	bodies.assertNoSecrets(t, testClientSecret, localPW)
}
