package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"mailproxy/auth"
	"mailproxy/config"
	"mailproxy/daemon"
	"mailproxy/internal/fake365"
	"mailproxy/internal/testutil"
	"mailproxy/oauth/store"
	"mailproxy/upstream"
)

const (
	cliClient    = "mailproxy-cli-test" // public client: authcode and device
	cliAppClient = "mailproxy-cli-app"  // confidential client: client_credentials
	cliAppSecret = "app-secret-value"
	cliPassword  = "correct horse battery"
	cliAlice     = "alice@contoso.com"
	cliBob       = "bob@contoso.com"
	cliShared    = "sales@contoso.com"
	cliDevice    = "dev@contoso.com"
	cliNever     = "never@contoso.com"
)

// scannerHash is the password_hash of the client_credentials account,
// computed once: Argon2id is slow on purpose.
var scannerHash = sync.OnceValues(func() (string, error) { return auth.HashPassword("scanner pw") })

// cliEnv is a fake Microsoft 365 (IdP, IMAP, SMTP with a test CA) and a
// config file pointing at it.
type cliEnv struct {
	idp     *fake365.IdP
	ca      *fake365.CA
	imap    *fake365.IMAPUpstream
	smtp    *fake365.SMTPUpstream
	dir     string
	cfgPath string

	mu     sync.Mutex // protects opened
	opened []string   // addresses given to the browser opener
}

func newCLIEnv(t *testing.T) *cliEnv {
	t.Helper()
	e := &cliEnv{dir: t.TempDir()}
	var err error
	if e.idp, err = fake365.NewIdP(); err != nil {
		t.Fatalf("NewIdP() = %v", err)
	}
	t.Cleanup(e.idp.Close)
	if e.ca, err = fake365.NewCA(); err != nil {
		t.Fatalf("NewCA() = %v", err)
	}
	srvTLS, err := e.ca.ServerTLS()
	if err != nil {
		t.Fatalf("ServerTLS() = %v", err)
	}
	if e.imap, err = fake365.NewIMAPUpstream(e.idp, srvTLS); err != nil {
		t.Fatalf("NewIMAPUpstream() = %v", err)
	}
	t.Cleanup(func() { e.imap.Close() })
	if e.smtp, err = fake365.NewSMTPUpstream(e.idp, srvTLS, false); err != nil {
		t.Fatalf("NewSMTPUpstream() = %v", err)
	}
	t.Cleanup(func() { e.smtp.Close() })
	for _, mb := range []string{cliAlice, cliBob, cliShared, cliDevice} {
		e.imap.AddMailbox(mb)
		e.idp.AddUser(mb)
	}
	e.imap.Delegate(cliShared, cliBob)
	e.idp.AddClient(fake365.Client{ID: cliClient, RedirectURIs: []string{"http://localhost/oauth2/callback"}})
	e.idp.AddClient(fake365.Client{ID: cliAppClient, Secret: cliAppSecret})
	e.idp.SetDeviceInterval(0) // the IdP never says slow_down unless forced

	if err := os.WriteFile(filepath.Join(e.dir, "ca.pem"), e.ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	e.cfgPath = filepath.Join(e.dir, "mailproxy.toml")
	e.writeConfig(t, e.imap.Addr, e.smtp.Addr, "")
	return e
}

// writeConfig (re)writes the config with these upstream servers and token
// URL ("" = the fake IdP's).
func (e *cliEnv) writeConfig(t *testing.T, imapAddr, smtpAddr, tokenURL string) {
	t.Helper()
	hash, err := scannerHash()
	if err != nil {
		t.Fatalf("HashPassword() = %v", err)
	}
	authURL, idpToken, deviceURL := e.idp.Endpoints("contoso.onmicrosoft.com")
	if tokenURL == "" {
		tokenURL = idpToken
	}
	cfg := fmt.Sprintf(`state_dir = "state"

[admin]
listen = ""

[[provider]]
name = "fake"
type = "custom"
client_id = %[1]q
auth_url = %[2]q
token_url = %[3]q
device_auth_url = %[4]q
scopes = ["https://outlook.office.com/IMAP.AccessAsUser.All", "https://outlook.office.com/SMTP.Send", "offline_access", "openid"]
imap_server = %[5]q
smtp_server = %[6]q
ca_file = "ca.pem"
redirect_url = "http://localhost:8025/oauth2/callback"

[[provider]]
name = "app"
type = "custom"
client_id = %[7]q
client_secret = %[8]q
auth_url = %[2]q
token_url = %[3]q
scopes = ["https://outlook.office.com/IMAP.AccessAsUser.All"]
app_scopes = ["https://outlook.office365.com/.default"]
imap_server = %[5]q
smtp_server = %[6]q
ca_file = "ca.pem"

[[account]]
username = %[9]q
provider = "fake"

[[account]]
username = "sales"
mailbox = %[10]q
provider = "fake"

[[account]]
username = %[11]q
provider = "fake"
flow = "device"

[[account]]
username = %[12]q
provider = "fake"

[[account]]
username = "scanner"
mailbox = "scanner@contoso.com"
provider = "app"
flow = "client_credentials"
password_hash = %[13]q
`, cliClient, authURL, tokenURL, deviceURL, imapAddr, smtpAddr, cliAppClient, cliAppSecret,
		cliAlice, cliShared, cliDevice, cliNever, hash)
	if err := os.WriteFile(e.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// open is the test's browser: it follows the sign-in address to the fake
// IdP, which signs in whoever SignInAs named, and back to login's loopback
// listener.
func (e *cliEnv) open(u string) error {
	e.mu.Lock()
	e.opened = append(e.opened, u)
	e.mu.Unlock()
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("Signed in")) {
		return fmt.Errorf("callback page: %d %s", resp.StatusCode, body)
	}
	return nil
}

func (e *cliEnv) openedCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.opened)
}

// runCmd runs mailproxy in-process with stdin and returns the exit code and
// output.
func (e *cliEnv) runCmd(t *testing.T, stdin io.Reader, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb testutil.Buffer
	env := &cmdEnv{
		stdin:   stdin,
		stdout:  &out,
		stderr:  &errb,
		getenv:  func(string) string { return "" },
		openURL: e.open,
	}
	code = run(t.Context(), env, args)
	return code, out.String(), errb.String()
}

// login runs `mailproxy login -password-stdin` with extra flags for user.
func (e *cliEnv) login(t *testing.T, user string, flags ...string) (int, string, string) {
	t.Helper()
	args := append([]string{"login", "-config", e.cfgPath, "-password-stdin"}, flags...)
	return e.runCmd(t, strings.NewReader(cliPassword+"\n"), append(args, user)...)
}

func (e *cliEnv) mustLogin(t *testing.T, user string, flags ...string) string {
	t.Helper()
	code, out, errOut := e.login(t, user, flags...)
	if code != exitOK {
		t.Fatalf("login %v %s = exit %d, want 0\nstdout:\n%s\nstderr:\n%s", flags, user, code, out, errOut)
	}
	return out
}

func (e *cliEnv) store(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(e.dir, "state", "tokens"))
	if err != nil {
		t.Fatalf("store.Open() = %v", err)
	}
	return st
}

func (e *cliEnv) meta(t *testing.T, user string) *store.Meta {
	t.Helper()
	m, err := e.store(t).ReadMeta(user)
	if err != nil {
		t.Fatalf("ReadMeta(%q) = %v", user, err)
	}
	return m
}

// imapLogin opens the account's stored entry the way serve does (Manager as
// the vault of auth.Accounts, with the local password), and logs in to the
// fake IMAP upstream with the token over XOAUTH2, trusting ca_file.
func (e *cliEnv) imapLogin(t *testing.T, user, password string) {
	t.Helper()
	cfg, err := config.Load(e.cfgPath)
	if err != nil {
		t.Fatalf("config.Load() = %v", err)
	}
	m, _, err := newManager(cfg, discardLogger())
	if err != nil {
		t.Fatalf("newManager() = %v", err)
	}
	a := cfg.Account(user)
	accts := auth.NewAccounts([]auth.AccountSpec{{Username: a.Username, Mailbox: a.Mailbox, Upstream: daemon.UpstreamFor(a.Provider)}}, auth.VaultOf(m.Open))
	g, err := accts.Authenticate(t.Context(), user, password, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatalf("Authenticate(%q) = %v", user, err)
	}
	tok, err := g.Tokens.Token(t.Context())
	if err != nil {
		t.Fatalf("Token() for %q = %v", user, err)
	}
	before := e.imap.Logins()
	c, err := imapclient.DialTLS(g.Upstream.AddrOf("imap"), &imapclient.Options{TLSConfig: g.Upstream.TLSFor(g.Upstream.AddrOf("imap"))})
	if err != nil {
		t.Fatalf("imapclient.DialTLS(%s) = %v", g.Upstream.AddrOf("imap"), err)
	}
	defer c.Close()
	if err := c.Authenticate(cliXOAuth2{user: g.Mailbox, token: tok}); err != nil {
		t.Fatalf("AUTHENTICATE XOAUTH2 user=%s = %v", g.Mailbox, err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Errorf("SELECT INBOX as %s = %v", g.Mailbox, err)
	}
	if got := e.imap.Logins(); got != before+1 {
		t.Errorf("upstream logins = %d, want %d", got, before+1)
	}
}

// cliXOAuth2 is a SASL XOAUTH2 client.
type cliXOAuth2 struct{ user, token string }

func (c cliXOAuth2) Start() (string, []byte, error) {
	return "XOAUTH2", upstream.XOAuth2(c.user, c.token), nil
}

func (c cliXOAuth2) Next([]byte) ([]byte, error) { return []byte{}, nil }

func TestLoginBrowser(t *testing.T) {
	e := newCLIEnv(t)
	e.idp.SignInAs(cliAlice)
	out := e.mustLogin(t, cliAlice) // authcode accounts default to the browser
	if !strings.Contains(out, "Signed in as "+cliAlice+".") {
		t.Errorf("login output = %q, want it to say who signed in", out)
	}
	if strings.Contains(out, "delegate") {
		t.Errorf("login output = %q, mentions a delegate for the account's own mailbox", out)
	}
	if n := e.openedCount(); n != 1 {
		t.Errorf("browser opened %d times, want 1", n)
	}
	u, _ := url.Parse(e.opened[0])
	q := u.Query()
	if !strings.HasPrefix(q.Get("redirect_uri"), "http://localhost:") || strings.Contains(q.Get("redirect_uri"), ":8025/") ||
		q.Get("login_hint") != cliAlice || q.Get("code_challenge_method") != "S256" {
		t.Errorf("sign-in address = %s; want a loopback redirect on another port, login_hint and PKCE", e.opened[0])
	}
	if m := e.meta(t, cliAlice); m.Identity != cliAlice || m.Flow != config.FlowAuthCode || m.RefreshObtained.IsZero() {
		t.Errorf("stored meta = %+v; want identity %s, flow authcode, refresh_obtained set", m, cliAlice)
	}
	e.imapLogin(t, cliAlice, cliPassword)
}

func TestLoginSharedMailboxDelegate(t *testing.T) {
	e := newCLIEnv(t)
	e.idp.SignInAs(cliBob)
	out := e.mustLogin(t, "sales", "-browser")
	if !strings.Contains(out, "Signed in as "+cliBob+", a delegate for the shared mailbox "+cliShared) {
		t.Errorf("login output = %q, want it to name the delegate and the shared mailbox", out)
	}
	if q, _ := url.Parse(e.opened[0]); q.Query().Get("login_hint") != cliShared {
		t.Errorf("login_hint = %q, want %q", q.Query().Get("login_hint"), cliShared)
	}
	e.imapLogin(t, "sales", cliPassword)
}

// manualStdout watches login's output for the sign-in address.
type manualStdout struct {
	mu   sync.Mutex // protects buf, sent
	buf  bytes.Buffer
	sent bool
	urls chan string
}

func (w *manualStdout) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if !w.sent {
		for _, f := range strings.Fields(w.buf.String()) {
			if strings.Contains(f, "/oauth2/v2.0/authorize?") {
				w.urls <- f
				w.sent = true
				break
			}
		}
	}
	return len(p), nil
}

func (w *manualStdout) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// loginManual runs `login -manual`: it types the password, waits for the
// sign-in address, signs in at the fake IdP and pastes the address the
// browser ends on, after edit.
func (e *cliEnv) loginManual(t *testing.T, user string, edit func(*url.URL)) (int, string, string) {
	t.Helper()
	return e.loginPasteBack(t, user, "-manual", edit)
}

// loginPasteBack is loginManual with another sign-in flag: the paste-back
// sign-in must come, for -device as a fallback.
func (e *cliEnv) loginPasteBack(t *testing.T, user, flag string, edit func(*url.URL)) (int, string, string) {
	t.Helper()
	pr, pw := io.Pipe()
	stdout := &manualStdout{urls: make(chan string, 1)}
	var errb testutil.Buffer
	env := &cmdEnv{stdin: pr, stdout: stdout, stderr: &errb, getenv: func(string) string { return "" },
		openURL: func(string) error { return errors.New("-manual must not open a browser") }}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer pw.Close()
		fmt.Fprintln(pw, cliPassword)
		var authURL string
		select {
		case authURL = <-stdout.urls:
		case <-ctx.Done():
			return
		}
		c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := c.Get(authURL)
		if err != nil {
			t.Errorf("GET %s = %v", authURL, err)
			return
		}
		resp.Body.Close()
		back, err := url.Parse(resp.Header.Get("Location"))
		if err != nil || resp.StatusCode != http.StatusFound {
			t.Errorf("authorize = %d Location %q; want a 302 back", resp.StatusCode, resp.Header.Get("Location"))
			return
		}
		if edit != nil {
			edit(back)
		}
		fmt.Fprintln(pw, back.String())
	}()
	code := run(ctx, env, []string{"login", "-config", e.cfgPath, flag, "-password-stdin", user})
	cancel()
	<-done
	return code, stdout.String(), errb.String()
}

func TestLoginManual(t *testing.T) {
	e := newCLIEnv(t)
	e.idp.SignInAs(cliAlice)
	code, out, errOut := e.loginManual(t, cliAlice, func(u *url.URL) {
		if !strings.HasPrefix(u.String(), "http://localhost:8025/oauth2/callback?") {
			t.Errorf("browser ended on %s, want the configured redirect_url", u)
		}
	})
	if code != exitOK {
		t.Fatalf("login -manual = exit %d, want 0\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "Signed in as "+cliAlice) {
		t.Errorf("login -manual output = %q, want it to say who signed in", out)
	}
	e.imapLogin(t, cliAlice, cliPassword)
}

func TestLoginManualWrongState(t *testing.T) {
	e := newCLIEnv(t)
	e.idp.SignInAs(cliAlice)
	code, out, errOut := e.loginManual(t, cliAlice, func(u *url.URL) {
		q := u.Query()
		q.Set("state", "forged-"+q.Get("state"))
		u.RawQuery = q.Encode()
	})
	if code != exitFailure || !strings.Contains(errOut, "state differs") {
		t.Errorf("login -manual with a wrong state = exit %d, stderr %q; want exit 1 naming the state\nstdout:\n%s", code, errOut, out)
	}
	if got := e.idp.Stats().AuthCodes; got != 0 {
		t.Errorf("IdP redeemed %d codes, want 0", got)
	}
	if _, err := e.store(t).ReadMeta(cliAlice); !errors.Is(err, store.ErrNotSignedIn) {
		t.Errorf("ReadMeta after refused answer = %v, want ErrNotSignedIn", err)
	}
}

// setDeviceWait makes the device flow call hook (with the call number and
// the wait asked for) instead of waiting.
func setDeviceWait(t *testing.T, hook func(n int, d time.Duration)) *[]time.Duration {
	t.Helper()
	var waits []time.Duration
	deviceWait = func(ctx context.Context, d time.Duration) error {
		waits = append(waits, d)
		hook(len(waits), d)
		return ctx.Err()
	}
	t.Cleanup(func() { deviceWait = nil })
	return &waits
}

func TestLoginDevice(t *testing.T) {
	e := newCLIEnv(t)
	e.idp.ForceSlowDown(1)
	waits := setDeviceWait(t, func(n int, _ time.Duration) {
		if n == 2 {
			if err := e.idp.ApproveDevice(e.idp.LastUserCode(), cliDevice); err != nil {
				t.Errorf("ApproveDevice() = %v", err)
			}
		}
	})
	out := e.mustLogin(t, cliDevice) // device accounts default to the device flow
	if code := e.idp.LastUserCode(); !strings.Contains(out, code) || !strings.Contains(out, e.idp.URL+"/devicelogin") {
		t.Errorf("login output = %q, want the user code %s and the address", out, code)
	}
	if want := []time.Duration{5 * time.Second, 10 * time.Second}; !slices.Equal(*waits, want) {
		t.Errorf("poll waits = %v, want %v (slow_down adds 5s)", *waits, want)
	}
	if e.openedCount() != 0 {
		t.Errorf("device flow opened a browser")
	}
	if m := e.meta(t, cliDevice); m.Flow != config.FlowDevice || m.Identity != cliDevice {
		t.Errorf("stored meta = %+v, want flow device, identity %s", m, cliDevice)
	}
	e.imapLogin(t, cliDevice, cliPassword)
}

func TestLoginDeviceForAuthCodeAccount(t *testing.T) {
	e := newCLIEnv(t)
	setDeviceWait(t, func(int, time.Duration) {
		if err := e.idp.ApproveDevice(e.idp.LastUserCode(), cliAlice); err != nil {
			t.Errorf("ApproveDevice() = %v", err)
		}
	})
	e.mustLogin(t, cliAlice, "-device")
	if m := e.meta(t, cliAlice); m.Flow != config.FlowDevice {
		t.Errorf("stored flow = %q, want device (the flow used)", m.Flow)
	}
}

func TestLoginDeviceExpired(t *testing.T) {
	e := newCLIEnv(t)
	setDeviceWait(t, func(n int, _ time.Duration) {
		if n == 2 {
			e.idp.SetClock(func() time.Time { return time.Now().Add(16 * time.Minute) })
		}
	})
	code, out, errOut := e.login(t, cliDevice)
	if code != exitFailure || !strings.Contains(errOut, "expired") || !strings.Contains(errOut, "AADSTS70019") {
		t.Errorf("login with an expired code = exit %d, stderr %q; want exit 1 saying it expired\nstdout:\n%s", code, errOut, out)
	}
	if _, err := e.store(t).ReadMeta(cliDevice); !errors.Is(err, store.ErrNotSignedIn) {
		t.Errorf("ReadMeta after failed sign-in = %v, want ErrNotSignedIn", err)
	}
}

func TestLoginDeviceDeclined(t *testing.T) {
	e := newCLIEnv(t)
	setDeviceWait(t, func(n int, _ time.Duration) {
		if n == 1 {
			if err := e.idp.DeclineDevice(e.idp.LastUserCode()); err != nil {
				t.Errorf("DeclineDevice() = %v", err)
			}
		}
	})
	code, _, errOut := e.login(t, cliDevice)
	if code != exitFailure || !strings.Contains(errOut, "declined") || strings.Contains(errOut, "what to do") {
		t.Errorf("login declined = exit %d, stderr %q; want exit 1 saying it was declined, without an unrelated hint", code, errOut)
	}
}

func TestLoginPasswordStdinEmpty(t *testing.T) {
	e := newCLIEnv(t)
	e.idp.SignInAs(cliAlice)
	for _, in := range []string{"", "\n"} {
		code, _, errOut := e.runCmd(t, strings.NewReader(in), "login", "-config", e.cfgPath, "-password-stdin", cliAlice)
		if code != exitFailure || !strings.Contains(errOut, "empty password") {
			t.Errorf("login with stdin %q = exit %d, stderr %q; want exit 1, empty password", in, code, errOut)
		}
	}
	if e.openedCount() != 0 || e.idp.Stats().AuthCodes != 0 {
		t.Errorf("sign-in ran (%d opened, %d codes) although the password was refused", e.openedCount(), e.idp.Stats().AuthCodes)
	}
}

func TestLoginClientCredentials(t *testing.T) {
	e := newCLIEnv(t)
	code, out, errOut := e.runCmd(t, strings.NewReader(""), "login", "-config", e.cfgPath, "scanner")
	if code != exitOK || !strings.Contains(out, "needs no sign-in") || !strings.Contains(out, "issued an app token") {
		t.Errorf("login scanner = exit %d, stdout %q, stderr %q; want exit 0, no sign-in needed, token ok", code, out, errOut)
	}
	if got := e.idp.Stats().ClientCredentials; got != 1 {
		t.Errorf("IdP client_credentials grants = %d, want 1", got)
	}
	if users, _ := e.store(t).List(); len(users) != 0 {
		t.Errorf("store holds %v after client_credentials login, want nothing", users)
	}

	e.idp.AddClient(fake365.Client{ID: cliAppClient, Secret: "rotated"})
	code, _, errOut = e.runCmd(t, strings.NewReader(""), "login", "-config", e.cfgPath, "scanner")
	if code != exitFailure || !strings.Contains(errOut, "AADSTS7000215") || !strings.Contains(errOut, "client secret is wrong") {
		t.Errorf("login scanner with a wrong secret = exit %d, stderr %q; want exit 1 with the AADSTS code and hint", code, errOut)
	}
	if strings.Contains(errOut, cliAppSecret) {
		t.Errorf("stderr %q shows the client secret", errOut)
	}
}

func TestLoginUsage(t *testing.T) {
	e := newCLIEnv(t)
	tests := [][]string{
		{"login", "-config", e.cfgPath},
		{"login", "-config", e.cfgPath, "nobody@contoso.com"},
		{"login", "-config", e.cfgPath, "-device", "-manual", cliAlice},
		{"login", "-config", e.cfgPath, "-device", "scanner"},
		{"login", "-config", filepath.Join(e.dir, "missing.toml"), cliAlice},
		{"logout", "-config", e.cfgPath},
		{"logout", "-config", e.cfgPath, "nobody@contoso.com"},
	}
	for _, args := range tests {
		if code, _, errOut := e.runCmd(t, strings.NewReader(cliPassword+"\n"), args...); code != exitUsage {
			t.Errorf("%v = exit %d (stderr %q), want %d", args, code, errOut, exitUsage)
		}
	}
}

func TestLogout(t *testing.T) {
	e := newCLIEnv(t)
	e.idp.SignInAs(cliAlice)
	e.mustLogin(t, cliAlice)
	path := filepath.Join(e.dir, "state", "tokens")
	if users, _ := e.store(t).List(); !slices.Equal(users, []string{cliAlice}) {
		t.Fatalf("store.List() = %v, want [%s]", users, cliAlice)
	}

	code, out, errOut := e.runCmd(t, nil, "logout", "-config", e.cfgPath, "ALICE@contoso.com")
	if code != exitOK || !strings.Contains(out, "Removed the stored sign-in of "+cliAlice) {
		t.Errorf("logout = exit %d, stdout %q, stderr %q; want 0 and Removed", code, out, errOut)
	}
	if _, err := e.store(t).ReadMeta(cliAlice); !errors.Is(err, store.ErrNotSignedIn) {
		t.Errorf("ReadMeta after logout = %v, want ErrNotSignedIn", err)
	}
	if des, _ := os.ReadDir(path); len(des) != 0 {
		var names []string
		for _, d := range des {
			names = append(names, d.Name())
		}
		if slices.ContainsFunc(names, func(n string) bool { return strings.HasSuffix(n, ".token") }) {
			t.Errorf("token directory holds %v after logout", names)
		}
	}

	code, out, _ = e.runCmd(t, nil, "logout", "-config", e.cfgPath, cliAlice)
	if code != exitOK || !strings.Contains(out, "was not signed in") {
		t.Errorf("second logout = exit %d, stdout %q; want 0, was not signed in", code, out)
	}
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// On a terminal the password is asked twice, after the sign-in; a short
// one is refused with the reason and asked again.
func TestLoginTerminalPasswordAfterSignIn(t *testing.T) {
	e := newCLIEnv(t)
	e.idp.SignInAs(cliAlice)
	var prompts []string
	answers := []string{"short", "first-long-1", "typo-long-12", "first-long-1", "first-long-1"}
	var out, errb bytes.Buffer
	env := &cmdEnv{
		stdin:  strings.NewReader(""),
		stdout: &out,
		stderr: &errb,
		getenv: func(string) string { return "" },
		readPassword: func(prompt string) (string, error) {
			if got := e.idp.Stats().AuthCodes; got != 1 {
				t.Errorf("password asked with %d codes redeemed, want 1 (after the sign-in)", got)
			}
			prompts = append(prompts, prompt)
			a := answers[0]
			answers = answers[1:]
			return a, nil
		},
		openURL: e.open,
	}
	if code := run(t.Context(), env, []string{"login", "-config", e.cfgPath, cliAlice}); code != exitOK {
		t.Fatalf("login = exit %d, stderr %q", code, errb.String())
	}
	if len(prompts) != 5 || !strings.Contains(prompts[0], "local password for "+cliAlice) {
		t.Errorf("prompts = %q, want 5 naming the account (a short password and a mismatch ask again)", prompts)
	}
	if !strings.Contains(errb.String(), "differ") || !strings.Contains(errb.String(), "at least 10") {
		t.Errorf("stderr = %q, want the short password and the mismatch reported", errb.String())
	}
	e.imapLogin(t, cliAlice, "first-long-1")
}

// Google sends refresh tokens only to sign-ins with access_type=offline.
func TestLoginGmailAsksForOfflineAccess(t *testing.T) {
	e := newCLIEnv(t)
	authURL, tokenURL, _ := e.idp.Endpoints("common")
	data, err := readFileString(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	data += fmt.Sprintf(`
[[provider]]
name = "google"
type = "gmail"
client_id = %q
auth_url = %q
token_url = %q
imap_server = %q
smtp_server = %q
ca_file = "ca.pem"
redirect_url = "http://localhost:8025/oauth2/callback"

[[account]]
username = "gm@contoso.com"
provider = "google"
`, cliClient, authURL, tokenURL, e.imap.Addr, e.smtp.Addr)
	writeFileString(t, e.cfgPath, data)
	e.idp.SignInAs("gm@contoso.com")
	out := e.mustLogin(t, "gm@contoso.com")
	q, _ := url.Parse(e.opened[0])
	if q.Query().Get("access_type") != "offline" || q.Query().Get("prompt") != "consent" {
		t.Errorf("gmail sign-in address = %s; want access_type=offline and prompt=consent", e.opened[0])
	}
	// The fake IdP grants refresh tokens for offline_access only, which the
	// gmail preset does not ask for: login warns.
	if !strings.Contains(out, "no refresh token") {
		t.Errorf("login output = %q, want a warning about the missing refresh token", out)
	}
}

// A tenant that blocks the device flow (Conditional Access, AADSTS53003)
// gets the paste-back browser sign-in at once, in the same command.
func TestLoginDeviceBlockedOffersBrowser(t *testing.T) {
	e := newCLIEnv(t)
	e.idp.BlockDeviceFlow(true)
	e.idp.SignInAs(cliDevice)
	setDeviceWait(t, func(n int, _ time.Duration) {
		if n == 1 {
			if err := e.idp.ApproveDevice(e.idp.LastUserCode(), cliDevice); err != nil {
				t.Errorf("ApproveDevice() = %v", err)
			}
		}
	})
	code, out, errOut := e.loginPasteBack(t, cliDevice, "-device", nil)
	if code != exitOK {
		t.Fatalf("login -device in a tenant that blocks it = exit %d, want 0 after the browser fallback\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, want := range []string{"Asking " + strings.TrimPrefix(e.idp.URL, "http://") + " for a device code (waiting up to 30s)",
		"Conditional Access", "AADSTS53003", "Signing in with the browser instead", "login -config " + e.cfgPath + " -browser " + cliDevice, "Signed in as " + cliDevice} {
		if !strings.Contains(out, want) {
			t.Errorf("login output lacks %q:\n%s", want, out)
		}
	}
	if m := e.meta(t, cliDevice); m.Flow != config.FlowAuthCode {
		t.Errorf("stored flow = %q, want authcode (the flow that worked)", m.Flow)
	}
	e.imapLogin(t, cliDevice, cliPassword)
}

// A device sign-in without a refresh token (Security Defaults) is said so
// plainly and replaced by a browser sign-in that has one.
func TestLoginDeviceWithoutRefreshTokenOffersBrowser(t *testing.T) {
	e := newCLIEnv(t)
	e.idp.DeviceWithoutRefreshToken(true)
	e.idp.SignInAs(cliDevice)
	setDeviceWait(t, func(n int, _ time.Duration) {
		if n == 1 {
			if err := e.idp.ApproveDevice(e.idp.LastUserCode(), cliDevice); err != nil {
				t.Errorf("ApproveDevice() = %v", err)
			}
		}
	})
	code, out, errOut := e.loginPasteBack(t, cliDevice, "-device", nil)
	if code != exitOK || !strings.Contains(out, "gave no refresh token") || !strings.Contains(out, "Signing in with the browser instead") {
		t.Fatalf("login -device without a refresh token = exit %d, want 0 with the fallback said\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if got := e.idp.Stats().AuthCodes; got != 1 {
		t.Errorf("IdP redeemed %d authorization codes, want 1 (the fallback)", got)
	}
	if strings.Contains(out, "Warning: the identity provider sent no refresh token") {
		t.Errorf("the stored sign-in has no refresh token:\n%s", out)
	}
}

// While the identity provider does not answer, login says where it waits
// and for how long, and its hint does not speak of a current access token.
func TestLoginDeadIdPSaysWhatItWaitsFor(t *testing.T) {
	e := newCLIEnv(t)
	e.idp.Close() // nothing answers at its address any more
	code, out, errOut := e.login(t, cliDevice)
	if code != exitFailure {
		t.Fatalf("login against a failing IdP = exit %d, want 1", code)
	}
	if !strings.Contains(out, "for a device code (waiting up to 30s)") {
		t.Errorf("login output = %q, want what it is waiting for and how long", out)
	}
	if !strings.Contains(errOut, "device code endpoint") || strings.Contains(errOut, "token endpoint") {
		t.Errorf("login error = %q, want it to name the device code endpoint, not the token endpoint", errOut)
	}
	if strings.Contains(errOut, "current access token") {
		t.Errorf("login error = %q speaks of a current access token a first sign-in does not have", errOut)
	}
}
