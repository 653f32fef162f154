package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"mailproxy/config"
	"mailproxy/daemon"
	"mailproxy/internal/cmdline"
	"mailproxy/internal/fake365"
	"mailproxy/oauth"
	"mailproxy/oauth/store"
)

// The demo's accounts. The passwords are printed: this is a demo against a
// fake Microsoft 365 that lives in this process and dies with it.
const (
	demoUser        = "demo@contoso.com"
	demoPassword    = "demo"
	demoPending     = "scanner@contoso.com" // shown as "needs sign-in"
	demoGraphUser   = "graph@contoso.com"   // sends through (the fake) Microsoft Graph
	demoClientID    = "11111111-2222-3333-4444-555555555555"
	demoTenant      = "contoso.onmicrosoft.com"
	demoProvider    = "contoso"
	demoSeedPerUser = 3
)

type demoOptions struct {
	imap, smtp, admin string // listen addresses
	pop3              string // "" = no POP3
	stateDir          string // "" = a temporary directory removed at the end
	// logOut receives the daemon's log; nil means the file
	// <state dir>/mailproxy.log, so that the banner stays on the screen.
	logOut io.Writer
}

// demo is a running demo: the fakes and the daemon in front of them.
type demo struct {
	d        *daemon.Daemon
	cfgFile  string // the config the demo wrote
	logFile  string // where the log goes; "" when logOut was given
	idp      *fake365.IdP
	imapUp   *fake365.IMAPUpstream
	smtpUp   *fake365.SMTPUpstream
	popUp    *fake365.POP3Upstream
	graph    *fake365.Graph
	cleanups []func()
}

func (dm *demo) close(ctx context.Context) {
	if dm.d != nil {
		dm.d.Shutdown(ctx)
	}
	for i := len(dm.cleanups) - 1; i >= 0; i-- {
		dm.cleanups[i]()
	}
}

const demoHelp = `usage: mailproxy demo [-imap ADDR] [-smtp ADDR] [-pop3 ADDR] [-admin ADDR] [-log FILE]

Runs mailproxy against a fake Microsoft 365 that lives in this process: a
fake Entra ID, Exchange Online IMAP, SMTP and POP3, and two accounts, one signed
in and one waiting for a sign-in on the admin page. Nothing leaves this
machine and no Microsoft account is needed. Everything (config, tokens,
log) is in a temporary directory that is removed when the demo stops
(Ctrl-C).

Mail clients connect to the IMAP, SMTP and POP3 addresses it prints; mail
sent through its SMTP port arrives in the INBOX. If a port is taken (8025 is
also MailHog's and Mailpit's), choose others, or 127.0.0.1:0 for any free
port.
`

func runDemo(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlags(env, "demo")
	var o demoOptions
	fs.StringVar(&o.imap, "imap", "127.0.0.1:1143", "IMAP listen `address`")
	fs.StringVar(&o.smtp, "smtp", "127.0.0.1:1587", "SMTP listen `address`")
	fs.StringVar(&o.pop3, "pop3", "127.0.0.1:1110", "POP3 listen `address` (\"\" = no POP3)")
	fs.StringVar(&o.admin, "admin", "127.0.0.1:8025", "admin page listen `address` (\"\" = no admin page)")
	logTo := fs.String("log", "", "log `file`; \"-\" = standard error (default: mailproxy.log in the demo's directory)")
	fs.Usage = func() {
		fmt.Fprint(env.stderr, demoHelp+"\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("demo takes no arguments")
	}
	switch *logTo {
	case "":
	case "-":
		o.logOut = env.stderr
	default:
		f, err := os.OpenFile(*logTo, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return usagef("-log: %v", err)
		}
		defer f.Close()
		o.logOut = f
	}
	dm, err := startDemo(o)
	if err != nil {
		return err
	}
	cmdline.Set(cmdline.Invocation{Config: dm.cfgFile, DefaultConfig: defaultConfigPath(env)})
	printDemoBanner(env.stdout, dm)
	<-ctx.Done()
	fmt.Fprintln(env.stdout, "\nStopping the demo.")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dm.close(sctx)
	return nil
}

func startDemo(o demoOptions) (*demo, error) {
	dm := &demo{}
	if err := dm.start(o); err != nil {
		dm.close(context.Background())
		var le *daemon.ListenError
		if errors.As(err, &le) && errors.Is(err, syscall.EADDRINUSE) {
			flag := map[string]string{"imap": "-imap", "smtp": "-smtp", "pop3": "-pop3", "admin": "-admin"}[le.Listener]
			return nil, fmt.Errorf("%s (the demo's %s address) is in use by another program: choose another with %s, or any free port with %s 127.0.0.1:0",
				le.Addr, strings.ToUpper(le.Listener), flag, flag)
		}
		return nil, err
	}
	return dm, nil
}

// start builds the demo into dm; on error, dm.close releases what was
// built.
func (dm *demo) start(o demoOptions) error {
	dir, err := dm.dir(o)
	if err != nil {
		return err
	}
	caFile, err := dm.startFakes(dir)
	if err != nil {
		return err
	}
	cfg, err := dm.writeConfig(o, dir, caFile)
	if err != nil {
		return err
	}
	logOut, err := dm.logOutput(o, dir)
	if err != nil {
		return err
	}
	d, err := daemon.New(cfg, newLogger(cfg, logOut, false))
	if err != nil {
		return err
	}
	dm.d = d
	if err := dm.signIn(cfg); err != nil {
		return err
	}
	return d.Start()
}

// dir is the demo's directory: the one given, or a temporary one removed
// at the end.
func (dm *demo) dir(o demoOptions) (string, error) {
	if o.stateDir != "" {
		return o.stateDir, nil
	}
	dir, err := os.MkdirTemp("", "mailproxy-demo-")
	if err != nil {
		return "", err
	}
	dm.cleanups = append(dm.cleanups, func() { os.RemoveAll(dir) })
	return dir, nil
}

// startFakes starts the fake Microsoft 365 (identity provider, IMAP, SMTP,
// POP3 and Graph, under a CA whose certificate it writes to dir) and
// seeds the mailboxes. It returns the CA file.
func (dm *demo) startFakes(dir string) (caFile string, err error) {
	ca, err := fake365.NewCA()
	if err != nil {
		return "", fmt.Errorf("demo CA: %w", err)
	}
	caFile = filepath.Join(dir, "fake365-ca.pem")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o600); err != nil {
		return "", err
	}
	serverTLS, err := ca.ServerTLS()
	if err != nil {
		return "", err
	}
	dm.idp, err = fake365.NewIdP()
	if err != nil {
		return "", fmt.Errorf("demo identity provider: %w", err)
	}
	dm.cleanups = append(dm.cleanups, dm.idp.Close)
	dm.idp.AddClient(fake365.Client{ID: demoClientID, RedirectURIs: []string{"http://localhost/oauth2/callback"}})
	dm.idp.SignInAs(demoPending)

	dm.imapUp, err = fake365.NewIMAPUpstream(dm.idp, serverTLS)
	if err != nil {
		return "", fmt.Errorf("demo IMAP server: %w", err)
	}
	dm.cleanups = append(dm.cleanups, func() { dm.imapUp.Close() })
	dm.smtpUp, err = fake365.NewSMTPUpstream(dm.idp, serverTLS, false)
	if err != nil {
		return "", fmt.Errorf("demo SMTP server: %w", err)
	}
	dm.cleanups = append(dm.cleanups, func() { dm.smtpUp.Close() })
	dm.popUp, err = fake365.NewPOP3Upstream(dm.idp, dm.imapUp, serverTLS)
	if err != nil {
		return "", fmt.Errorf("demo POP3 server: %w", err)
	}
	dm.cleanups = append(dm.cleanups, func() { dm.popUp.Close() })
	dm.graph, err = fake365.NewGraph(dm.idp)
	if err != nil {
		return "", fmt.Errorf("demo Graph: %w", err)
	}
	dm.cleanups = append(dm.cleanups, dm.graph.Close)
	if err := dm.seed(); err != nil {
		return "", err
	}
	dm.deliverSent()
	return caFile, nil
}

// seed fills the demo mailboxes' INBOX.
func (dm *demo) seed() error {
	for _, mb := range []string{demoUser, demoPending, demoGraphUser} {
		dm.imapUp.AddMailbox(mb)
		for i, msg := range demoMessages(mb) {
			if err := dm.imapUp.Append(mb, "INBOX", msg); err != nil {
				return fmt.Errorf("seed message %d: %w", i, err)
			}
		}
	}
	return nil
}

// deliverSent makes mail sent through the demo's SMTP port (or Graph)
// land in the recipients' INBOX (the demo user's when the recipient is
// not one of ours), so it can be read back over IMAP.
func (dm *demo) deliverSent() {
	deliver := func(rcpts []string, data []byte) {
		delivered := false
		for _, r := range rcpts {
			for _, mb := range []string{demoUser, demoPending, demoGraphUser} {
				if strings.EqualFold(r, mb) {
					dm.imapUp.Append(mb, "INBOX", data)
					delivered = true
				}
			}
		}
		if !delivered {
			dm.imapUp.Append(demoUser, "INBOX", data)
		}
	}
	dm.smtpUp.SetDeliver(func(m fake365.Message) {
		var rcpts []string
		for _, r := range m.Rcpts {
			rcpts = append(rcpts, r.Addr)
		}
		deliver(rcpts, m.Data)
	})
	dm.graph.SetDeliver(func(s *fake365.GraphSent) {
		deliver(slices.Concat(s.To, s.Cc, s.Bcc), s.Message())
	})
}

// writeConfig writes the demo's config, pointing at the fakes, into dir
// and loads it.
func (dm *demo) writeConfig(o demoOptions, dir, caFile string) (*config.Config, error) {
	authURL, tokenURL, deviceURL := dm.idp.Endpoints(demoTenant)
	cfgText := fmt.Sprintf(`# written by mailproxy demo
state_dir = %q
[imap]
listen = %q
[smtp]
listen = %q
domain = "mailproxy-demo"
[pop3]
listen = %q
[admin]
listen = %q
[log]
level = "info"

[[provider]]
name = %q
type = "custom"
client_id = %q
auth_url = %q
token_url = %q
device_auth_url = %q
scopes = ["https://outlook.office.com/IMAP.AccessAsUser.All", "https://outlook.office.com/SMTP.Send", "https://outlook.office.com/POP.AccessAsUser.All", "offline_access", "openid"]
imap_server = %q
smtp_server = %q
pop3_server = %q
ca_file = %q
graph_url = %q

[[account]]
username = %q

[[account]]
username = %q

[[account]]
username = %q
send_via = "graph"
`, filepath.Join(dir, "state"), o.imap, o.smtp, o.pop3, o.admin, demoProvider, demoClientID,
		authURL, tokenURL, deviceURL, dm.imapUp.Addr, dm.smtpUp.Addr, dm.popUp.Addr, caFile, dm.graph.URL, demoUser, demoPending, demoGraphUser)
	cfgFile := filepath.Join(dir, "mailproxy.toml")
	dm.cfgFile = cfgFile
	if err := os.WriteFile(cfgFile, []byte(cfgText), 0o600); err != nil {
		return nil, err
	}
	cfg, err := config.Load(cfgFile)
	if err != nil {
		return nil, fmt.Errorf("demo config: %w", err)
	}
	return cfg, nil
}

// logOutput is where the daemon logs: o.logOut, or the file
// mailproxy.log in dir.
func (dm *demo) logOutput(o demoOptions, dir string) (io.Writer, error) {
	if o.logOut != nil {
		return o.logOut, nil
	}
	dm.logFile = filepath.Join(dir, "mailproxy.log")
	f, err := os.OpenFile(dm.logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	dm.cleanups = append(dm.cleanups, func() { f.Close() })
	return f, nil
}

// signIn signs the demo users in the way `mailproxy login` would have: a
// refresh token from the identity provider, sealed with the local
// password. Its scopes hold Graph's too, since one account sends through
// Graph.
func (dm *demo) signIn(cfg *config.Config) error {
	scopes := cfg.Accounts[0].Provider.Scopes
	for _, user := range []string{demoUser, demoGraphUser} {
		rt := dm.idp.GrantRefreshToken(demoClientID, user, scopes)
		now := time.Now()
		err := dm.d.Manager().Seal(user, demoPassword, oauth.TokenSet{RefreshToken: rt, Scopes: scopes},
			store.Meta{Identity: user, Flow: config.FlowAuthCode, Created: now, RefreshObtained: now})
		if err != nil {
			return fmt.Errorf("sign in the demo account %s: %w", user, err)
		}
	}
	return nil
}

func demoMessages(to string) [][]byte {
	subjects := []string{
		"Welcome to mailproxy",
		"Your scan from the 3rd floor printer",
		"Quarterly report",
	}
	bodies := []string{
		"This message came from the fake Exchange Online through mailproxy.\r\nYour client logged in with a plain password; mailproxy used OAuth 2.0 (XOAUTH2) upstream.\r\n",
		"Scanned pages would be attached here.\r\n",
		"Numbers are up. This is a demo.\r\n",
	}
	msgs := make([][]byte, 0, demoSeedPerUser)
	date := time.Date(2026, 11, 2, 9, 0, 0, 0, time.UTC)
	for i := range demoSeedPerUser {
		msgs = append(msgs, []byte(fmt.Sprintf("From: IT <it@contoso.com>\r\nTo: <%s>\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <demo-%d-%s>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n%s",
			to, subjects[i], date.Add(time.Duration(i)*time.Hour).Format(time.RFC1123Z), i, to, bodies[i])))
	}
	return msgs
}

func printDemoBanner(w io.Writer, dm *demo) {
	imapAddr := dm.d.Addr("imap").String()
	smtpAddr := dm.d.Addr("smtp").String()
	fmt.Fprintf(w, `
mailproxy demo is running against a fake Microsoft 365 (in this process; nothing leaves this machine).

  IMAP     %s   (plain; STARTTLS off in the demo)
  SMTP     %s   (AUTH PLAIN or LOGIN)
`, imapAddr, smtpAddr)
	var pop3Addr string
	if a := dm.d.Addr("pop3"); a != nil {
		pop3Addr = a.String()
		fmt.Fprintf(w, "  POP3     %s   (USER/PASS, AUTH PLAIN or LOGIN)\n", pop3Addr)
	}
	fmt.Fprintf(w, `  username %s
  password %s
  (%s, same password, sends through a fake Microsoft Graph: send_via = "graph")
`, demoUser, demoPassword, demoGraphUser)
	if u := dm.d.AdminURL(); u != "" {
		// localhost, not 127.0.0.1: the sign-in returns to the redirect
		// address registered for the app, and cookies follow the host name.
		// The link carries the page's access token.
		fmt.Fprintf(w, "  admin    %s\n           (%s is signed in; sign %s in from there)\n", u, demoUser, demoPending)
	}
	fmt.Fprintf(w, "  config   %s\n", dm.cfgFile)
	if dm.logFile != "" {
		fmt.Fprintf(w, "  log      %s   (tail -f it to watch)\n", dm.logFile)
	}
	fmt.Fprintf(w, `
List the INBOX and read the first message:
  curl -s imap://%s/ -u %s:%s -X 'EXAMINE INBOX'
  curl -s "imap://%s/INBOX/;UID=1" -u %s:%s

Send a message and read it back (UID=* is the newest message):
  printf 'Subject: hello\r\n\r\nsent through mailproxy\r\n' > /tmp/msg.eml
  curl -s smtp://%s --mail-from %s --mail-rcpt %s --upload-file /tmp/msg.eml -u %s:%s
  curl -s "imap://%s/INBOX/;UID=*" -u %s:%s

%sOther commands take the demo's config:
  %s

Any IMAP client works too (Thunderbird: server %s, no encryption, normal password).
The account %s is configured but not signed in, so its logins are refused with a hint.
Everything above is removed when the demo stops. Press Ctrl-C to stop.
`, imapAddr, demoUser, demoPassword,
		imapAddr, demoUser, demoPassword,
		smtpAddr, demoUser, demoUser, demoUser, demoPassword,
		imapAddr, demoUser, demoPassword,
		pop3Hint(pop3Addr),
		cmdline.Command("status"),
		imapAddr, demoPending)
}

// pop3Hint is the banner's POP3 example, "" without a POP3 listener.
func pop3Hint(addr string) string {
	if addr == "" {
		return ""
	}
	return fmt.Sprintf(`List the messages over POP3 and fetch the first (RETR 1):
  curl -s pop3://%s/ -u %s:%s
  curl -s pop3://%s/1 -u %s:%s

`, addr, demoUser, demoPassword, addr, demoUser, demoPassword)
}
