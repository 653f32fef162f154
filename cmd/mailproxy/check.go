package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"mailproxy/config"
	"mailproxy/daemon"
	"mailproxy/oauth"
	"mailproxy/upstream"
)

// checkTimeout bounds each network check of `mailproxy check`: dial, TLS
// handshake and the greeting or token request.
const checkTimeout = 15 * time.Second

// maxGreeting bounds the IMAP lines check reads.
const maxGreeting = 4096

// checker runs the checks and prints one line per check.
type checker struct {
	env    *cmdEnv
	failed int
	total  int
}

// progressf says on w what a command now waits for and how long it
// waits at most: "Asking login.microsoftonline.com for a device code
// (waiting up to 30s)...". login and check print these lines.
func progressf(w io.Writer, wait time.Duration, format string, args ...any) {
	fmt.Fprintf(w, format+" (waiting up to %s)...\n", append(args, wait)...)
}

// progress says on stderr what the next check waits for and how long.
func (c *checker) progress(format string, args ...any) {
	progressf(c.env.stderr, checkTimeout, format, args...)
}

func (c *checker) report(what string, detail string, err error) {
	c.total++
	if err != nil {
		c.failed++
		fmt.Fprintf(c.env.stdout, "FAIL  %s: %v\n", what, withHint(err))
		return
	}
	fmt.Fprintf(c.env.stdout, "ok    %s: %s\n", what, detail)
}

// result is check's outcome: an error when any check failed.
func (c *checker) result() error {
	if c.failed > 0 {
		return fmt.Errorf("%d of %d checks failed", c.failed, c.total)
	}
	return nil
}

const checkHelp = `usage: mailproxy check [-config FILE] [-account USER [-send-to ADDR] [-password-stdin]]

Validates the config (exit 2 when it is wrong), then checks what can be
checked without a user's sign-in: each provider's token endpoint answers and
knows the app, client_credentials accounts get an app token, and each IMAP
and SMTP server completes the TLS handshake (IMAP: implicit TLS; SMTP:
STARTTLS, or implicit TLS on port 465) and offers XOAUTH2, and so does each
POP3 server (implicit TLS) when [pop3] has a listener. One line per
check; exits 1 when any failed. Before each check a line on standard error
says what it waits for and for how long.

With -account USER it checks that account as the proxy would use it: gets
its access token (asking for its local password; client_credentials
accounts need none), signs in at the upstream IMAP server and opens the
INBOX, signs in at the upstream SMTP server and tries MAIL FROM (for an
account with send_via = "graph": gets its Microsoft Graph token instead),
and, when [pop3] has a listener, signs in at the upstream POP3 server
(STAT). Each failure prints the server's own answer, the cause and the fix,
Exchange Online PowerShell included. -send-to ADDR also sends a short test
message (through Graph for send_via = "graph") and prints the reply.

Flags:`

func runCheck(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlags(env, "check")
	cfgPath := configFlag(env, fs)
	account := fs.String("account", "", "sign in upstream for this account (its `username`) with its real tokens")
	sendTo := fs.String("send-to", "", "with -account: send a short test message to this `address`")
	pwStdin := fs.Bool("password-stdin", false, "with -account: read the account's local password from standard input")
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, checkHelp)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("check takes no arguments")
	}
	if *account == "" && (*sendTo != "" || *pwStdin) {
		return usagef("-send-to and -password-stdin need -account")
	}
	cfg, err := loadConfig(env, *cfgPath)
	if err != nil {
		return err
	}
	c := &checker{env: env}
	if *account != "" {
		acct := cfg.Account(*account)
		if acct == nil {
			return usagef("no account %q in %s", *account, *cfgPath)
		}
		checkOneAccount(ctx, c, cfg, acct, accountPassword(env, acct, *pwStdin), *sendTo)
		if err := c.result(); err != nil {
			return err
		}
		resumeAfterCheck(ctx, env, cfg, acct)
		return nil
	}
	c.report("config "+*cfgPath, fmt.Sprintf("valid (%d providers, %d accounts)", len(cfg.Providers), len(cfg.Accounts)), nil)
	checkStateDir(c, cfg)
	servers := checkProviders(ctx, c, cfg)
	for _, k := range serverKinds {
		for _, s := range servers[k.proto] {
			c.progress("Connecting to %s (%s)", s.addr, k.how)
			var detail string
			err := checkTimed(ctx, func(ctx context.Context) (err error) {
				detail, err = k.check(ctx, s.addr, s.tls)
				return err
			})
			c.report(k.proto+" "+s.addr, detail, err)
		}
	}
	return c.result()
}

// accountPassword asks for acct's local password when check -account needs
// it: on the terminal, or from standard input.
func accountPassword(env *cmdEnv, acct *config.Account, stdin bool) func() (string, error) {
	return func() (string, error) {
		if stdin || env.readPassword == nil {
			line, err := bufio.NewReader(env.stdin).ReadString('\n')
			line = strings.TrimRight(line, "\r\n")
			if line == "" {
				return "", fmt.Errorf("read the local password of %s from standard input: %v", acct.Username, err)
			}
			return line, nil
		}
		return env.readPassword("Local password of " + acct.Username + ": ")
	}
}

// checkStateDir checks the token store without creating it: created by
// root, serve could not use it.
func checkStateDir(c *checker, cfg *config.Config) {
	stateDir := "state_dir " + cfg.StateDir
	if !storeExists(cfg) {
		c.report(stateDir, "no token store yet; login creates it (run login and serve as the same user)", nil)
	} else if _, err := daemon.OpenStore(cfg); err != nil {
		c.report(stateDir, "", err)
	} else {
		c.report(stateDir, "token store usable", nil)
	}
}

// server is one upstream server to check, with its provider's roots.
type server struct {
	addr string
	tls  *tls.Config
}

// serverKinds are the upstream servers check connects to, in order.
var serverKinds = []struct {
	proto, how string
	check      func(ctx context.Context, addr string, base *tls.Config) (string, error)
}{
	{"imap", "IMAP, implicit TLS", checkIMAP},
	{"smtp", "SMTP", checkSMTP},
	{"pop3", "POP3, implicit TLS", checkPOP3},
}

// checkProviders checks each provider's token endpoint (and app token)
// and returns its upstream servers by protocol, each server once. POP3
// servers only matter when the POP3 front is on.
func checkProviders(ctx context.Context, c *checker, cfg *config.Config) map[string][]server {
	servers := map[string][]server{}
	seen := map[string]bool{}
	add := func(proto, addr string, base *tls.Config) {
		if addr != "" && !seen[proto+" "+addr] {
			seen[proto+" "+addr] = true
			servers[proto] = append(servers[proto], server{addr, base})
		}
	}
	for _, p := range cfg.Providers {
		op := daemon.OAuthProvider(p)
		c.progress("Asking %s whether it knows the client_id of provider %s", hostOf(p.TokenURL), p.Name)
		err := checkTimed(ctx, func(ctx context.Context) error { return oauth.ProbeTokenEndpoint(ctx, op) })
		c.report(fmt.Sprintf("provider %s token endpoint %s", p.Name, p.TokenURL), "answers and knows client_id", err)

		var apps []string
		for _, a := range cfg.Accounts {
			if a.Provider == p && a.Flow == config.FlowClientCredentials {
				apps = append(apps, a.Username)
			}
		}
		if len(apps) > 0 {
			c.progress("Asking %s for an app token", hostOf(p.TokenURL))
			err := checkTimed(ctx, func(ctx context.Context) error {
				_, err := oauth.NewAppSource(op, discardLogger()).Token(ctx)
				return err
			})
			c.report(fmt.Sprintf("provider %s app-only token (for %s)", p.Name, strings.Join(apps, ", ")), "issued", err)
		}

		base := &tls.Config{RootCAs: p.RootCAs, MinVersion: tls.VersionTLS12}
		add("imap", p.IMAPServer, base)
		add("smtp", p.SMTPServer, base)
		if pop3On(cfg) {
			add("pop3", p.POP3Server, base)
		}
	}
	return servers
}

func checkTimed(ctx context.Context, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	return f(ctx)
}

// closeOnDone closes conn when ctx ends, so that every read and write of a
// check stops at its deadline; call the returned function when done.
func closeOnDone(ctx context.Context, conn net.Conn) func() bool {
	return context.AfterFunc(ctx, func() { conn.Close() })
}

// dialGreeting connects with implicit TLS and reads the server's
// greeting, which must start with want ("* OK", "+OK"). done closes the
// connection.
func dialGreeting(ctx context.Context, addr string, base *tls.Config, want string) (conn net.Conn, r *bufio.Reader, done func(), err error) {
	conn, err = upstream.DialTLS(ctx, nil, addr, base)
	if err != nil {
		return nil, nil, nil, err
	}
	stop := closeOnDone(ctx, conn)
	done = func() { stop(); conn.Close() }
	r = bufio.NewReaderSize(conn, maxGreeting)
	line, err := readIMAPLine(r)
	if err != nil {
		done()
		return nil, nil, nil, fmt.Errorf("read greeting: %w", err)
	}
	if !strings.HasPrefix(line, want) {
		done()
		return nil, nil, nil, fmt.Errorf("greeting is %q, want \"%s ...\"", shorten(line), want)
	}
	return conn, r, done, nil
}

// checkIMAP connects with implicit TLS, reads the greeting and asks for the
// capabilities: XOAUTH2 must be among them.
func checkIMAP(ctx context.Context, addr string, base *tls.Config) (string, error) {
	conn, r, done, err := dialGreeting(ctx, addr, base, "* OK")
	if err != nil {
		return "", err
	}
	defer done()
	if _, err := conn.Write([]byte("C1 CAPABILITY\r\n")); err != nil {
		return "", fmt.Errorf("send CAPABILITY: %w", err)
	}
	xoauth2 := false
	for {
		line, err := readIMAPLine(r)
		if err != nil {
			return "", fmt.Errorf("read CAPABILITY answer: %w", err)
		}
		if strings.HasPrefix(line, "* CAPABILITY ") {
			for _, c := range strings.Fields(line) {
				xoauth2 = xoauth2 || strings.EqualFold(c, "AUTH=XOAUTH2")
			}
		}
		if strings.HasPrefix(line, "C1 ") {
			if !strings.HasPrefix(line, "C1 OK") {
				return "", fmt.Errorf("CAPABILITY answered %q", shorten(line))
			}
			break
		}
	}
	conn.Write([]byte("C2 LOGOUT\r\n"))
	if !xoauth2 {
		return "", errors.New("TLS and greeting ok, but the server does not offer AUTH=XOAUTH2")
	}
	return "TLS ok, greeting * OK, AUTH=XOAUTH2 offered", nil
}

func readIMAPLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return "", fmt.Errorf("line longer than %d bytes", maxGreeting)
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}

// checkSMTP reads the greeting, says EHLO, starts TLS (STARTTLS, or
// implicit TLS on port 465), says EHLO again and checks that AUTH XOAUTH2
// is offered.
func checkSMTP(ctx context.Context, addr string, base *tls.Config) (string, error) {
	c, err := smtpDial(ctx, addr, base)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if !c.SupportsAuth("XOAUTH2") {
		return "", errors.New("TLS ok, but the server does not offer AUTH XOAUTH2 (Exchange Online: is SMTP AUTH enabled for the tenant?)")
	}
	c.Quit()
	how := "STARTTLS"
	if upstream.ImplicitTLS(addr) {
		how = "implicit TLS"
	}
	return how + " ok, AUTH XOAUTH2 offered", nil
}

func shorten(s string) string {
	if len(s) > 100 {
		return s[:100] + "..."
	}
	return s
}
