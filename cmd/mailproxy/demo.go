package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"mailproxy/config"
	"mailproxy/daemon"
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
	demoClientID    = "11111111-2222-3333-4444-555555555555"
	demoTenant      = "contoso.onmicrosoft.com"
	demoProvider    = "contoso"
	demoSeedPerUser = 3
)

type demoOptions struct {
	imap, smtp, admin string // listen addresses
	stateDir          string // "" = a temporary directory removed at the end
	logOut            io.Writer
}

// demo is a running demo: the fakes and the daemon in front of them.
type demo struct {
	d        *daemon.Daemon
	idp      *fake365.IdP
	imapUp   *fake365.IMAPUpstream
	smtpUp   *fake365.SMTPUpstream
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

func runDemo(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlags(env, "demo")
	var o demoOptions
	fs.StringVar(&o.imap, "imap", "127.0.0.1:1143", "IMAP listen `address`")
	fs.StringVar(&o.smtp, "smtp", "127.0.0.1:1587", "SMTP listen `address`")
	fs.StringVar(&o.admin, "admin", "127.0.0.1:8025", "admin page listen `address`")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("demo takes no arguments")
	}
	o.logOut = env.stderr
	dm, err := startDemo(o)
	if err != nil {
		return err
	}
	printDemoBanner(env.stdout, dm)
	<-ctx.Done()
	fmt.Fprintln(env.stdout, "\nStopping the demo.")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dm.close(sctx)
	return nil
}

func startDemo(o demoOptions) (dm *demo, err error) {
	dm = &demo{}
	defer func() {
		if err != nil {
			dm.close(context.Background())
		}
	}()
	dir := o.stateDir
	if dir == "" {
		dir, err = os.MkdirTemp("", "mailproxy-demo-")
		if err != nil {
			return nil, err
		}
		dm.cleanups = append(dm.cleanups, func() { os.RemoveAll(dir) })
	}

	ca, err := fake365.NewCA()
	if err != nil {
		return nil, fmt.Errorf("demo CA: %w", err)
	}
	caFile := filepath.Join(dir, "fake365-ca.pem")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o600); err != nil {
		return nil, err
	}
	serverTLS, err := ca.ServerTLS()
	if err != nil {
		return nil, err
	}
	dm.idp, err = fake365.NewIdP()
	if err != nil {
		return nil, fmt.Errorf("demo identity provider: %w", err)
	}
	dm.cleanups = append(dm.cleanups, dm.idp.Close)
	dm.idp.AddClient(fake365.Client{ID: demoClientID, RedirectURIs: []string{"http://localhost/oauth2/callback"}})
	dm.idp.SignInAs(demoPending)

	dm.imapUp, err = fake365.NewIMAPUpstream(dm.idp, serverTLS)
	if err != nil {
		return nil, fmt.Errorf("demo IMAP server: %w", err)
	}
	dm.cleanups = append(dm.cleanups, func() { dm.imapUp.Close() })
	dm.smtpUp, err = fake365.NewSMTPUpstream(dm.idp, serverTLS, false)
	if err != nil {
		return nil, fmt.Errorf("demo SMTP server: %w", err)
	}
	dm.cleanups = append(dm.cleanups, func() { dm.smtpUp.Close() })
	for _, mb := range []string{demoUser, demoPending} {
		dm.imapUp.AddMailbox(mb)
		for i, msg := range demoMessages(mb) {
			if err := dm.imapUp.Append(mb, "INBOX", msg); err != nil {
				return nil, fmt.Errorf("seed message %d: %w", i, err)
			}
		}
	}
	// Mail sent through the demo's SMTP port lands in the recipients' INBOX
	// (the demo user's when the recipient is not one of ours), so it can be
	// read back over IMAP.
	dm.smtpUp.SetDeliver(func(m fake365.Message) {
		delivered := false
		for _, r := range m.Rcpts {
			for _, mb := range []string{demoUser, demoPending} {
				if strings.EqualFold(r.Addr, mb) {
					dm.imapUp.Append(mb, "INBOX", m.Data)
					delivered = true
				}
			}
		}
		if !delivered {
			dm.imapUp.Append(demoUser, "INBOX", m.Data)
		}
	})

	authURL, tokenURL, deviceURL := dm.idp.Endpoints(demoTenant)
	cfgText := fmt.Sprintf(`# written by mailproxy demo
state_dir = %q
[imap]
listen = %q
[smtp]
listen = %q
domain = "mailproxy-demo"
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
scopes = ["https://outlook.office.com/IMAP.AccessAsUser.All", "https://outlook.office.com/SMTP.Send", "offline_access", "openid"]
imap_server = %q
smtp_server = %q
ca_file = %q

[[account]]
username = %q

[[account]]
username = %q
`, filepath.Join(dir, "state"), o.imap, o.smtp, o.admin, demoProvider, demoClientID,
		authURL, tokenURL, deviceURL, dm.imapUp.Addr, dm.smtpUp.Addr, caFile, demoUser, demoPending)
	cfgFile := filepath.Join(dir, "mailproxy.toml")
	if err := os.WriteFile(cfgFile, []byte(cfgText), 0o600); err != nil {
		return nil, err
	}
	cfg, err := config.Load(cfgFile)
	if err != nil {
		return nil, fmt.Errorf("demo config: %w", err)
	}
	logger := newLogger(cfg, o.logOut, false)
	d, err := daemon.New(cfg, logger)
	if err != nil {
		return nil, err
	}
	dm.d = d

	// Sign the demo user in the way `mailproxy login` would have: a refresh
	// token from the identity provider, sealed with the local password.
	scopes := cfg.Accounts[0].Provider.Scopes
	rt := dm.idp.GrantRefreshToken(demoClientID, demoUser, scopes)
	now := time.Now()
	err = d.Manager().Seal(demoUser, demoPassword, oauth.TokenSet{RefreshToken: rt, Scopes: scopes},
		store.Meta{Identity: demoUser, Flow: config.FlowAuthCode, Created: now, RefreshObtained: now})
	if err != nil {
		return nil, fmt.Errorf("sign in the demo account: %w", err)
	}
	if err := d.Start(); err != nil {
		return nil, err
	}
	return dm, nil
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
	if a := dm.d.Addr("admin"); a != nil {
		// localhost, not 127.0.0.1: the sign-in returns to the redirect
		// address registered for the app, and cookies follow the host name.
		_, port, _ := net.SplitHostPort(a.String())
		fmt.Fprintf(w, "\nAdmin page: http://localhost:%s/  (%s is signed in; sign %s in from there)\n", port, demoUser, demoPending)
	}
	fmt.Fprintf(w, `
mailproxy demo is running against a fake Microsoft 365 (in this process; nothing leaves this machine).

  IMAP     %s   (plain; STARTTLS off in the demo)
  SMTP     %s   (AUTH PLAIN or LOGIN)
  username %s
  password %s

List the INBOX and read the first message:
  curl -s imap://%s/ -u %s:%s -X 'EXAMINE INBOX'
  curl -s "imap://%s/INBOX/;UID=1" -u %s:%s

Send a message and read it back:
  printf 'Subject: hello\r\n\r\nsent through mailproxy\r\n' > /tmp/msg.eml
  curl -s smtp://%s --mail-from %s --mail-rcpt %s --upload-file /tmp/msg.eml -u %s:%s
  curl -s "imap://%s/INBOX/;UID=%d" -u %s:%s

Any IMAP client works too (Thunderbird: server %s, no encryption, normal password).
The account %s is configured but not signed in, so its logins are refused with a hint.
Press Ctrl-C to stop.
`, imapAddr, smtpAddr, demoUser, demoPassword,
		imapAddr, demoUser, demoPassword,
		imapAddr, demoUser, demoPassword,
		smtpAddr, demoUser, demoUser, demoUser, demoPassword,
		imapAddr, demoSeedPerUser+1, demoUser, demoPassword,
		imapAddr, demoPending)
}
