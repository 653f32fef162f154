package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"mailproxy/config"
	"mailproxy/daemon"
	"mailproxy/internal/cmdline"
	"mailproxy/oauth"
	"mailproxy/oauth/store"
)

// signInTimeout bounds a whole interactive sign-in: Entra's device codes
// last 15 minutes, and a browser sign-in with MFA takes a few.
const signInTimeout = 15 * time.Minute

// deviceWait replaces the device flow's poll timer; tests set it so that
// polling needs no waiting. nil means a real timer.
var deviceWait func(ctx context.Context, d time.Duration) error

// Sign-in methods of `mailproxy login`.
const (
	methodBrowser = "browser"
	methodManual  = "manual"
	methodDevice  = "device"
)

const loginHelp = `usage: mailproxy login [-config FILE] [-device|-browser|-manual] [-password-stdin] USER

Signs USER (an [[account]] username) in at the identity provider and stores
the tokens, encrypted with a local password that the mail client will use.

  -browser   open the sign-in page in a browser on this machine; a one-shot
             listener on localhost receives the answer (the default for
             flow = "authcode")
  -manual    print the sign-in address; after signing in (on any machine),
             paste the address the browser ended on (it holds code= and
             state=), even if that page failed to load
  -device    show a code to enter at the provider's device login page on any
             device (the default for flow = "device")

The local password is asked twice on a terminal after the sign-in. With
-password-stdin, or when stdin is not a terminal, it is the first line of
stdin and is read before the sign-in (with -manual the pasted address is the
next line). A running "mailproxy serve" picks the new sign-in up by itself.

Accounts with flow = "client_credentials" need no sign-in: login only checks
that the app gets a token.
`

func runLogin(ctx context.Context, env *cmdEnv, args []string) error {
	o, err := parseLoginFlags(env, args)
	if err != nil {
		return err
	}
	cfg, err := loadConfig(env, o.cfgPath)
	if err != nil {
		return err
	}
	acct := cfg.Account(o.user)
	if acct == nil {
		return usagef("no account %q in %s", o.user, o.cfgPath)
	}
	p := daemon.OAuthProvider(acct.Provider)
	if acct.Flow == config.FlowClientCredentials {
		if o.method != "" {
			return usagef("account %s uses flow client_credentials, which has no sign-in", acct.Username)
		}
		return loginApp(ctx, env, acct, p)
	}
	method, err := signInMethod(o.method, acct, p)
	if err != nil {
		return err
	}

	// The password and a pasted address may both come from stdin: read
	// both through one buffer (newPassword reuses a *bufio.Reader).
	e := *env
	in := bufio.NewReader(env.stdin)
	e.stdin = in
	what := "local password for " + acct.Username
	fromStdin := o.pwStdin || env.readPassword == nil
	service := acct.Seal == config.SealService
	password, err := passwordBeforeSignIn(&e, cfg, acct, o.pwStdin, fromStdin, what)
	if err != nil {
		return err
	}

	m, _, err := newManager(cfg, discardLogger())
	if err != nil {
		return err
	}

	sctx, cancel := context.WithTimeout(ctx, signInTimeout)
	defer cancel()
	ts, identity, method, err := signInOrBrowser(sctx, &e, in, method, acct, p)
	if err != nil {
		return withHint(fmt.Errorf("sign in %s: %w", acct.Username, err))
	}
	if !fromStdin && !service {
		if password, err = newPassword(&e, false, what); err != nil {
			return err
		}
	}

	flow := config.FlowAuthCode
	if method == methodDevice {
		flow = config.FlowDevice
	}
	meta := store.Meta{Identity: identity, Flow: flow, Created: time.Now()}
	if err := m.Seal(acct.Username, password, ts, meta); err != nil {
		return err
	}
	printSignedIn(env.stdout, acct, identity, ts, service)
	return nil
}

// loginOptions are login's flags and argument.
type loginOptions struct {
	cfgPath string
	user    string
	method  string // "" when no -browser, -manual or -device was given
	pwStdin bool
}

func parseLoginFlags(env *cmdEnv, args []string) (loginOptions, error) {
	fs := newFlags(env, "login")
	cfgPath := configFlag(env, fs)
	device := fs.Bool("device", false, "sign in with a code entered on any device")
	browser := fs.Bool("browser", false, "sign in with a browser on this machine")
	manual := fs.Bool("manual", false, "sign in anywhere and paste the address the browser ended on")
	pwStdin := fs.Bool("password-stdin", false, "read the local password as the first line of stdin")
	fs.Usage = func() {
		fmt.Fprint(env.stderr, loginHelp)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return loginOptions{}, err
	}
	if fs.NArg() != 1 {
		return loginOptions{}, usagef("login needs exactly one USER (an account's username)")
	}
	o := loginOptions{cfgPath: *cfgPath, user: fs.Arg(0), pwStdin: *pwStdin}
	for _, m := range []struct {
		set  bool
		name string
	}{{*browser, methodBrowser}, {*manual, methodManual}, {*device, methodDevice}} {
		if !m.set {
			continue
		}
		if o.method != "" {
			return loginOptions{}, usagef("use only one of -browser, -manual and -device")
		}
		o.method = m.name
	}
	return o, nil
}

// signInMethod is the method asked for, or the account's flow's, checked
// against what the provider offers.
func signInMethod(method string, acct *config.Account, p *oauth.Provider) (string, error) {
	if method == "" {
		method = methodBrowser
		if acct.Flow == config.FlowDevice {
			method = methodDevice
		}
	}
	if method == methodDevice && p.DeviceAuthURL == "" {
		return "", usagef("provider %s has no device flow (device_auth_url); use -browser or -manual", acct.Provider.Name)
	}
	return method, nil
}

// passwordBeforeSignIn returns the local password where it is known
// before the sign-in: the service key's for seal = "service" (there is no
// local password to ask for), stdin's first line when it comes from stdin
// (so that a bad password does not waste the sign-in). Otherwise it is ""
// and asked on the terminal after the sign-in.
func passwordBeforeSignIn(e *cmdEnv, cfg *config.Config, acct *config.Account, pwStdin, fromStdin bool, what string) (string, error) {
	if acct.Seal == config.SealService {
		if pwStdin {
			return "", usagef("account %s has seal = \"service\": there is no local password to read", acct.Username)
		}
		key, err := oauth.LoadServiceKey(cfg.StateDir, true)
		if err != nil {
			return "", err
		}
		return key.Password(acct.Username), nil
	}
	if fromStdin {
		return newPassword(e, true, what)
	}
	return "", nil
}

// signInOrBrowser runs signIn with method and returns the method that
// signed in. Tenants block the device flow (Conditional Access) or let it
// give no refresh token (Security Defaults): then the browser flow is
// offered at once, not after another try.
func signInOrBrowser(ctx context.Context, env *cmdEnv, in *bufio.Reader, method string, acct *config.Account, p *oauth.Provider) (oauth.TokenSet, string, string, error) {
	ts, identity, err := signIn(ctx, env, in, method, acct, p)
	if method != methodDevice {
		return ts, identity, method, err
	}
	why := oauth.DeviceRefused(err)
	if err == nil && ts.RefreshToken == "" {
		why = oauth.DeviceRefused(oauth.ErrNoRefreshToken)
	}
	if why == "" || p.AuthURL == "" {
		return ts, identity, method, err
	}
	fmt.Fprintf(env.stdout, "\nThe device code sign-in did not work: %s.\n", why)
	fmt.Fprintf(env.stdout, "Signing in with the browser instead (copy the address into a browser on any machine; on this machine, %s opens one).\n\n",
		cmdline.Command("login", "-browser", acct.Username))
	ts, identity, err = signIn(ctx, env, in, methodManual, acct, p)
	return ts, identity, methodManual, err
}

// printSignedIn says as whom the account signed in, for which mailbox,
// and how its tokens were saved.
func printSignedIn(out io.Writer, acct *config.Account, identity string, ts oauth.TokenSet, service bool) {
	mailbox := acct.Mailbox
	if mailbox == "" {
		mailbox = acct.Username
	}
	switch {
	case identity == "":
		fmt.Fprintf(out, "Signed in (the identity provider did not say as whom: is openid among the scopes?); mailbox %s.\n", mailbox)
	case strings.EqualFold(identity, mailbox):
		fmt.Fprintf(out, "Signed in as %s.\n", identity)
	default:
		fmt.Fprintf(out, "Signed in as %s, a delegate for the shared mailbox %s.\n", identity, mailbox)
		fmt.Fprintf(out, "  %s needs Full Access to %s (and Send As to send from its address).\n", identity, mailbox)
		fmt.Fprintf(out, "  If %s is not who should sign in, run login again and pick the right account.\n", identity)
	}
	if ts.RefreshToken == "" {
		fmt.Fprintln(out, "Warning: the identity provider sent no refresh token (is offline_access among the scopes?): the sign-in lasts only until the access token expires at "+
			ts.Expiry.Local().Format(timeLayout)+".")
	}
	if service {
		fmt.Fprintf(out, "Tokens for %s saved, sealed with the service key. A running mailproxy serve can use them without a client.\n", acct.Username)
		return
	}
	fmt.Fprintf(out, "Tokens for %s saved, encrypted with its local password. A running mailproxy serve uses them from the next login on.\n", acct.Username)
}

// signIn runs the chosen flow and returns the tokens and who signed in.
func signIn(ctx context.Context, env *cmdEnv, in *bufio.Reader, method string, acct *config.Account, p *oauth.Provider) (oauth.TokenSet, string, error) {
	out := env.stdout
	hint := acct.Mailbox
	if hint == "" && strings.Contains(acct.Username, "@") {
		hint = acct.Username
	}
	// Google's access_type=offline and prompt=consent: oauth.NewAuthCode
	// adds them (Provider.OfflineConsent), for the admin page too.
	switch method {
	case methodDevice:
		f := &oauth.DeviceFlow{Provider: p, Wait: deviceWait}
		progressf(out, oauth.RequestTimeout, "Asking %s for a device code", hostOf(p.DeviceAuthURL))
		dc, err := f.Start(ctx)
		if err != nil {
			return oauth.TokenSet{}, "", err
		}
		fmt.Fprintf(out, "%s.\n", dc.Instructions())
		if acct.Mailbox != "" && !strings.EqualFold(acct.Mailbox, acct.Username) {
			fmt.Fprintf(out, "Sign in as %s, or as a delegate with Full Access to it.\n", acct.Mailbox)
		}
		fmt.Fprintf(out, "Waiting for the sign-in (the code expires at %s)...\n", dc.Expiry.Local().Format("15:04"))
		return f.Poll(ctx, dc)

	case methodManual:
		a, authURL := oauth.NewAuthCode(p, p.RedirectURL, hint)
		fmt.Fprintf(out, "Open this address in a browser on any machine and sign in:\n\n  %s\n\n", authURL)
		fmt.Fprintf(out, "The browser then goes to %s...; that page may fail to load, which is fine.\n", p.RedirectURL)
		fmt.Fprintln(out, "Copy the whole address from the address bar and paste it here:")
		line, err := readLine(ctx, in)
		if err != nil {
			return oauth.TokenSet{}, "", fmt.Errorf("read the pasted address: %w", err)
		}
		q, err := oauth.ParseCallback(line)
		if err != nil {
			return oauth.TokenSet{}, "", err
		}
		progressf(out, oauth.RequestTimeout, "Redeeming the sign-in at %s", hostOf(p.TokenURL))
		return a.Exchange(ctx, q)

	default:
		open := env.openURL
		if open == nil {
			open = func(u string) error { return openBrowser(env, u) }
		}
		f := &oauth.BrowserFlow{Provider: p, LoginHint: hint, Open: open, Out: out}
		fmt.Fprintln(out, "If your browser runs on another machine, stop this (Ctrl-C) and use -manual or -device instead.")
		fmt.Fprintf(out, "Waiting up to %s for the browser to come back; then the sign-in is redeemed at %s.\n", signInTimeout, hostOf(p.TokenURL))
		return f.Run(ctx)
	}
}

// readLine reads one line from in, giving up when ctx ends (the reading
// goroutine then stays blocked until stdin has input or closes: login exits
// right after).
func readLine(ctx context.Context, in *bufio.Reader) (string, error) {
	type result struct {
		line string
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		line, err := in.ReadString('\n')
		if errors.Is(err, io.EOF) && line != "" {
			err = nil
		}
		ch <- result{line, err}
	}()
	select {
	case r := <-ch:
		return r.line, r.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// openBrowser starts the desktop's browser on u; it does not wait for it.
func openBrowser(env *cmdEnv, u string) error {
	var cmd *exec.Cmd
	switch runtime.GOOS {
	case "darwin":
		cmd = exec.Command("open", u)
	case "windows":
		cmd = exec.Command("rundll32", "url.dll,FileProtocolHandler", u)
	default:
		if env.getenv("DISPLAY") == "" && env.getenv("WAYLAND_DISPLAY") == "" {
			return errors.New("no graphical display")
		}
		cmd = exec.Command("xdg-open", u)
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	go cmd.Wait()
	return nil
}

// loginApp handles `login` for a client_credentials account: there is no
// sign-in, but getting one app token tells whether the app registration
// works.
func loginApp(ctx context.Context, env *cmdEnv, acct *config.Account, p *oauth.Provider) error {
	fmt.Fprintf(env.stdout, "%s uses flow client_credentials (an app-only token): it needs no sign-in and no stored tokens.\n", acct.Username)
	src := oauth.NewAppSource(p, discardLogger())
	progressf(env.stdout, oauth.RequestTimeout, "Asking %s for an app token", hostOf(p.TokenURL))
	if _, err := src.Token(ctx); err != nil {
		return withHint(fmt.Errorf("get an app token for %s from provider %s: %w", acct.Username, acct.Provider.Name, err))
	}
	fmt.Fprintf(env.stdout, "Checked: provider %s issued an app token (valid until %s).\n", acct.Provider.Name, src.State().Expiry.Local().Format(timeLayout))
	return nil
}

// timeLayout is how login, status and check print times.
const timeLayout = "2006-01-02 15:04"

// hintOf returns the admin hint of a token error in err's chain, or "".
// The device flow's own outcomes (expired, declined) say all there is to
// say, and their AADSTS numbers are shared with unrelated errors.
func hintOf(err error) string {
	var te *oauth.TokenError
	if !errors.As(err, &te) {
		return ""
	}
	switch te.Code {
	case "expired_token", "authorization_declined", "bad_verification_code":
		return ""
	}
	if te.Temporary() {
		// The daemon's hint speaks of keeping the current access token;
		// a command has none to keep.
		return "the identity provider did not answer or failed: check DNS, the firewall and HTTP proxy settings towards it (login.microsoftonline.com for Microsoft 365), then try again"
	}
	return te.Hint()
}

// hostOf is the host of an endpoint address, for progress lines.
func hostOf(u string) string {
	if p, err := url.Parse(u); err == nil && p.Host != "" {
		return p.Host
	}
	return u
}

// withHint appends what to do about a token error to err's text.
func withHint(err error) error {
	if h := hintOf(err); h != "" && !strings.Contains(err.Error(), h) {
		return fmt.Errorf("%w\n  what to do: %s", err, h)
	}
	return err
}

func runLogout(_ context.Context, env *cmdEnv, args []string) error {
	fs := newFlags(env, "logout")
	cfgPath := configFlag(env, fs)
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: mailproxy logout [-config FILE] USER\n\nRemoves USER's stored sign-in (tokens). Not being signed in is not an error.")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("logout needs exactly one USER (an account's username)")
	}
	cfg, err := loadConfig(env, *cfgPath)
	if err != nil {
		return err
	}
	user := fs.Arg(0)
	acct := cfg.Account(user)
	if acct != nil {
		user = acct.Username
	}
	// Without a store directory nobody is signed in; do not create it.
	err = fmt.Errorf("no token store yet: %w", store.ErrNotSignedIn)
	if storeExists(cfg) {
		st, oerr := daemon.OpenStore(cfg)
		if oerr != nil {
			return oerr
		}
		err = st.Remove(user)
	}
	switch {
	case errors.Is(err, store.ErrNotSignedIn) && acct == nil:
		return usagef("no account %q in %s, and no stored sign-in for it", user, *cfgPath)
	case errors.Is(err, store.ErrNotSignedIn):
		fmt.Fprintf(env.stdout, "%s was not signed in; nothing to remove.\n", user)
		return nil
	case err != nil:
		return err
	}
	fmt.Fprintf(env.stdout, "Removed the stored sign-in of %s.\n", user)
	fmt.Fprintln(env.stdout, "A running mailproxy serve refuses its logins from now on; sessions already open run until they end.")
	return nil
}
