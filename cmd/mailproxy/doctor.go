package main

// `mailproxy check -account USER [-send-to ADDR]`: for one account, get the
// real access token and sign in upstream for IMAP and SMTP as the proxy
// would; for each failure, print the upstream's own words, the cause and
// the exact fix (Exchange Online PowerShell included). -send-to sends a
// short test message through the real path and shows the upstream's reply.

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"mailproxy/config"
	"mailproxy/daemon"
	"mailproxy/internal/cmdline"
	"mailproxy/oauth"
	"mailproxy/upstream"
)

// accountCheck is what the upstream checks of one account need.
type accountCheck struct {
	c        *checker
	acct     *config.Account
	mailbox  string // IMAP user= and MAIL FROM
	identity string // SMTP user= (the delegate for a shared mailbox)
	token    string
	tokens   any // the *oauth.Source or *oauth.AppSource token came from (Graph's comes from it)
	appOnly  bool
}

// fix is one diagnosis: why it failed and what to do.
type fix struct{ cause, todo string }

func (a *accountCheck) fail(what, reply string, f fix) {
	a.c.total++
	a.c.failed++
	out := a.c.env.stdout
	fmt.Fprintf(out, "FAIL  %s\n", what)
	if reply != "" {
		fmt.Fprintf(out, "      upstream said: %s\n", reply)
	}
	if f.cause != "" {
		fmt.Fprintf(out, "      cause: %s\n", f.cause)
	}
	if f.todo != "" {
		fmt.Fprintf(out, "      fix:   %s\n", strings.ReplaceAll(f.todo, "\n", "\n             "))
	}
}

// checkOneAccount runs the checks of `check -account`.
func checkOneAccount(ctx context.Context, c *checker, cfg *config.Config, acct *config.Account, password func() (string, error), sendTo string) {
	a := &accountCheck{c: c, acct: acct, mailbox: acct.Mailbox, appOnly: acct.Flow == config.FlowClientCredentials}
	if a.mailbox == "" {
		a.mailbox = acct.Username
	}
	p := daemon.OAuthProvider(acct.Provider)
	what := fmt.Sprintf("access token for %s from %s", acct.Username, hostOf(p.TokenURL))
	c.progress("Asking %s for %s's access token", hostOf(p.TokenURL), acct.Username)
	var err error
	if a.appOnly {
		a.identity = a.mailbox
		app := oauth.NewAppSource(p, discardLogger())
		a.tokens = app
		err = checkTimed(ctx, func(ctx context.Context) (err error) {
			a.token, err = app.Token(ctx)
			return err
		})
	} else {
		err = a.delegatedToken(ctx, cfg, password)
	}
	if err != nil {
		f := fix{todo: hintOf(err)}
		if f.todo == "" {
			f.todo = "see the error above; " + "`mailproxy status` shows the account's last error"
		}
		a.fail(what, err.Error(), f)
		return
	}
	c.report(what, "issued", nil)
	a.imap(ctx)
	if acct.SendVia == config.SendViaGraph {
		// SMTP AUTH is not used (often off in such tenants).
		a.graph(ctx, sendTo)
	} else {
		a.smtp(ctx, sendTo)
	}
	if pop3On(cfg) && acct.Provider.POP3Server != "" {
		a.pop3(ctx)
	}
}

// delegatedToken opens the account's stored tokens with its local password
// (or the service key) and gets an access token, refreshing it if needed;
// a rotated refresh token is saved.
func (a *accountCheck) delegatedToken(ctx context.Context, cfg *config.Config, password func() (string, error)) error {
	if !storeExists(cfg) {
		return fmt.Errorf("%s is not signed in (no token store yet): run %s", a.acct.Username, cmdline.Login(a.acct.Username))
	}
	var pw string
	if a.acct.Seal == config.SealService {
		key, err := oauth.LoadServiceKey(cfg.StateDir, false)
		if err != nil {
			return err
		}
		pw = key.Password(a.acct.Username)
	} else {
		var err error
		if pw, err = password(); err != nil {
			return err
		}
	}
	m, _, err := newManager(cfg, discardLogger())
	if err != nil {
		return err
	}
	defer m.Flush()
	return checkTimed(ctx, func(ctx context.Context) error {
		src, identity, err := m.Open(ctx, a.acct.Username, pw)
		if err != nil {
			return err
		}
		a.identity, a.tokens = identity, src
		if a.identity == "" {
			a.identity = a.mailbox
		}
		a.token, err = src.Token(ctx)
		return err
	})
}

// imap signs in at the upstream IMAP server with XOAUTH2 and opens the
// INBOX, which is where "authenticated but not connected" shows.
func (a *accountCheck) imap(ctx context.Context) {
	a.signIn(ctx, "IMAP", a.acct.Provider.IMAPServer, fmt.Sprintf("AUTHENTICATE XOAUTH2 as %s", a.mailbox), imapSignIn, a.imapFix)
}

// signInFunc signs in at a server with XOAUTH2; reply is the server's
// refusal, if it refused.
type signInFunc func(ctx context.Context, addr string, base *tls.Config, user, token string) (reply, detail string, err error)

// signIn runs one upstream sign-in of the account and reports it: a
// refusal with the diagnosis fixFor gives, a server that cannot be reached
// with what to look at.
func (a *accountCheck) signIn(ctx context.Context, proto, addr, step string, f signInFunc, fixFor func(reply string) fix) {
	what := strings.ToLower(proto) + " " + addr + ": " + step
	a.c.progress("Signing in at %s (%s)", addr, proto)
	var reply, detail string
	err := checkTimed(ctx, func(ctx context.Context) (err error) {
		reply, detail, err = f(ctx, addr, &tls.Config{RootCAs: a.acct.Provider.RootCAs, MinVersion: tls.VersionTLS12}, a.mailbox, a.token)
		return err
	})
	switch {
	case err != nil && reply == "":
		a.fail(what, "", fix{cause: err.Error(), todo: "check that " + addr + " is reachable from this machine (DNS, firewall, HTTP/TLS inspection: provider.ca_file)"})
	case err != nil:
		a.fail(what, reply, fixFor(reply))
	default:
		a.c.report(what, detail, nil)
	}
}

func (a *accountCheck) imapFix(reply string) fix {
	id := a.identity
	switch {
	case strings.Contains(reply, "not connected"):
		return fix{
			cause: "Exchange accepted the token but could not open the mailbox " + a.mailbox + " for " + whoFor(a),
			todo: "give it Full Access (Exchange Online PowerShell, after Connect-ExchangeOnline):\n" +
				"Add-MailboxPermission -Identity " + a.mailbox + " -User " + principalFor(a) + " -AccessRights FullAccess\n" +
				"and check account.mailbox (" + a.mailbox + ") is the mailbox's primary address",
		}
	case a.appOnly && strings.Contains(reply, "AUTHENTICATE failed"):
		return fix{
			cause: "Exchange does not accept the app's token for " + a.mailbox + ": the app has no service principal in Exchange, or it has no access to the mailbox",
			todo: "register the app with Exchange and grant it the mailbox (Exchange Online PowerShell):\n" +
				"New-ServicePrincipal -AppId " + a.acct.Provider.ClientID + " -ObjectId <object id of the Enterprise Application>\n" +
				"Add-MailboxPermission -Identity " + a.mailbox + " -User <the same object id> -AccessRights FullAccess\n" +
				"The object id is the one under Entra ID > Enterprise applications, not the App registration's.\n" +
				"The app also needs the application permission IMAP.AccessAsApp with admin consent.",
		}
	case strings.Contains(reply, "AUTHENTICATE failed"):
		todo := "check that IMAP is on for the mailbox: Set-CASMailbox -Identity " + a.mailbox + " -ImapEnabled $true"
		if !strings.EqualFold(id, a.mailbox) {
			todo = "give " + id + " Full Access to the shared mailbox:\nAdd-MailboxPermission -Identity " + a.mailbox + " -User " + id + " -AccessRights FullAccess\nand " + todo
		}
		return fix{
			cause: "Exchange refused a valid token for " + a.mailbox + " signed in as " + id,
			todo:  todo + "; the app needs the delegated permission IMAP.AccessAsUser.All with consent",
		}
	}
	return fix{cause: "the IMAP server refused the sign-in"}
}

// smtp signs in at the upstream SMTP server, tries MAIL FROM (Send As is
// checked there) and, with sendTo, sends a short test message.
func (a *accountCheck) smtp(ctx context.Context, sendTo string) {
	addr := a.acct.Provider.SMTPServer
	what := fmt.Sprintf("smtp %s: AUTH XOAUTH2 as %s", addr, a.identity)
	a.c.progress("Signing in at %s (SMTP)", addr)
	// One deadline for the whole SMTP session: its steps share the
	// connection.
	ctx, cancel := context.WithTimeout(ctx, 3*checkTimeout)
	defer cancel()
	sc, err := smtpDial(ctx, addr, &tls.Config{RootCAs: a.acct.Provider.RootCAs, MinVersion: tls.VersionTLS12})
	if err == nil {
		defer sc.Close()
		err = sc.Auth(xoauth2Client{a.identity, a.token})
	}
	var se *smtp.SMTPError
	switch {
	case errors.As(err, &se):
		a.fail(what, smtpReply(se), a.smtpFix(se))
		return
	case err != nil:
		a.fail(what, "", fix{cause: err.Error(), todo: "check that " + addr + " is reachable from this machine (DNS, firewall; port 587 is often blocked outbound)"})
		return
	}
	a.c.report(what, "235 accepted", nil)

	from := a.mailbox
	what = fmt.Sprintf("smtp %s: MAIL FROM:<%s>", addr, from)
	if a.smtpFailed(what, sc.Mail(from, nil)) {
		return
	}
	if sendTo == "" {
		sc.Reset()
		a.c.report(what, "accepted (no message sent; -send-to ADDR sends one)", nil)
		sc.Quit()
		return
	}
	a.c.report(what, "accepted", nil)
	what = fmt.Sprintf("smtp %s: test message to %s", addr, sendTo)
	a.c.progress("Sending a test message to %s", sendTo)
	var resp string
	err = func() error {
		if err := sc.Rcpt(sendTo, nil); err != nil {
			return err
		}
		w, err := sc.Data()
		if err != nil {
			return err
		}
		if _, err := w.Write(daemon.TestMessage(from, sendTo, time.Now())); err != nil {
			return err
		}
		r, err := w.CloseWithResponse()
		if err != nil {
			return err
		}
		resp = "250 " + r.StatusText
		return nil
	}()
	if a.smtpFailed(what, err) {
		return
	}
	a.c.report(what, "sent; upstream said: "+resp, nil)
	sc.Quit()
}

// smtpFailed reports a failed SMTP step with the server's reply and its
// diagnosis; false when err is nil.
func (a *accountCheck) smtpFailed(what string, err error) bool {
	var se *smtp.SMTPError
	switch {
	case err == nil:
		return false
	case errors.As(err, &se):
		a.fail(what, smtpReply(se), a.smtpFix(se))
	default:
		a.fail(what, "", fix{cause: err.Error()})
	}
	return true
}

func (a *accountCheck) smtpFix(se *smtp.SMTPError) fix {
	ec := se.EnhancedCode
	code := fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
	switch {
	case code == "5.7.139":
		f := fix{cause: "SMTP AUTH (client submission) is switched off for the mailbox or the whole tenant; OAuth needs it on too",
			todo: "Exchange Online PowerShell, after Connect-ExchangeOnline:\n" +
				"Set-CASMailbox -Identity " + a.identity + " -SmtpClientAuthenticationDisabled $false\n" +
				"(tenant-wide: Set-TransportConfig -SmtpClientAuthenticationDisabled $false; Security Defaults keep it off)"}
		return f
	case code == "5.7.60" || code == "5.2.252" || strings.Contains(se.Message, "SendAs"):
		return fix{cause: whoFor(a) + " may not send as " + a.mailbox,
			todo: "Add-RecipientPermission -Identity " + a.mailbox + " -Trustee " + principalFor(a) + " -AccessRights SendAs -Confirm:$false\n" +
				"(it takes up to an hour to apply)"}
	case strings.Contains(se.Message, "MapiExceptionLogonFailed") || strings.Contains(se.Message, "mailbox logon failure"):
		return fix{cause: "Exchange accepted the token but could not open the mailbox " + a.mailbox + " for " + whoFor(a),
			todo: "New-ServicePrincipal -AppId " + a.acct.Provider.ClientID + " -ObjectId <object id of the Enterprise Application>\n" +
				"Add-MailboxPermission -Identity " + a.mailbox + " -User <the same object id> -AccessRights FullAccess\n" +
				"The object id is the one under Entra ID > Enterprise applications, not the App registration's."}
	case se.Code == 535:
		f := fix{cause: "Exchange refused the token for " + a.identity}
		if a.appOnly {
			f.todo = "the app needs the application permission SMTP.SendAsApp with admin consent, and a service principal in Exchange:\n" +
				"New-ServicePrincipal -AppId " + a.acct.Provider.ClientID + " -ObjectId <object id of the Enterprise Application>"
		} else {
			f.todo = "the app needs the delegated permission SMTP.Send with consent; sign in again afterwards: " + cmdline.Login(a.acct.Username)
		}
		return f
	}
	return fix{cause: "the SMTP server refused the step"}
}

func whoFor(a *accountCheck) string {
	if a.appOnly {
		return "the app (client_id " + a.acct.Provider.ClientID + ")"
	}
	return a.identity
}

func principalFor(a *accountCheck) string {
	if a.appOnly {
		return "<object id of the Enterprise Application>"
	}
	return a.identity
}

func smtpReply(se *smtp.SMTPError) string {
	ec := se.EnhancedCode
	if ec == smtp.NoEnhancedCode || ec == (smtp.EnhancedCode{}) {
		return fmt.Sprintf("%d %s", se.Code, se.Message)
	}
	return fmt.Sprintf("%d %d.%d.%d %s", se.Code, ec[0], ec[1], ec[2], se.Message)
}

// xoauth2Client is SASL XOAUTH2 for go-smtp's client: an error challenge
// is answered with an empty line, as the mechanism wants.
type xoauth2Client struct{ user, token string }

func (x xoauth2Client) Start() (string, []byte, error) {
	return "XOAUTH2", upstream.XOAuth2(x.user, x.token), nil
}

func (x xoauth2Client) Next([]byte) ([]byte, error) { return []byte{}, nil }

// smtpDial connects with STARTTLS, or implicit TLS on port 465, and says
// EHLO over TLS.
func smtpDial(ctx context.Context, addr string, base *tls.Config) (*smtp.Client, error) {
	cfg := (&upstream.Upstream{TLS: base}).TLSFor(addr)
	var c *smtp.Client
	if upstream.ImplicitTLS(addr) {
		conn, err := upstream.DialTLS(ctx, nil, addr, cfg)
		if err != nil {
			return nil, err
		}
		context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
		c = smtp.NewClient(conn)
	} else {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
		if c, err = smtp.NewClientStartTLS(conn, cfg); err != nil {
			conn.Close()
			return nil, fmt.Errorf("greeting, EHLO and STARTTLS: %w", err)
		}
	}
	if err := c.Hello("localhost"); err != nil {
		c.Close()
		return nil, fmt.Errorf("EHLO over TLS: %w", err)
	}
	return c, nil
}

// imapSignIn reads the greeting, authenticates with XOAUTH2 (SASL-IR) and
// selects the INBOX. reply is the upstream's line that refused, if any.
func imapSignIn(ctx context.Context, addr string, base *tls.Config, user, token string) (reply, detail string, err error) {
	conn, r, done, err := dialGreeting(ctx, addr, base, "* OK")
	if err != nil {
		return "", "", err
	}
	defer done()
	ir := base64.StdEncoding.EncodeToString(upstream.XOAuth2(user, token))
	if _, err := fmt.Fprintf(conn, "A1 AUTHENTICATE XOAUTH2 %s\r\n", ir); err != nil {
		return "", "", err
	}
	tagged := func(tag string) (string, error) {
		for {
			line, err := readIMAPLine(r)
			if err != nil {
				return "", err
			}
			if strings.HasPrefix(line, "+") {
				// An error challenge: answer it with an empty line.
				if _, err := conn.Write([]byte("\r\n")); err != nil {
					return "", err
				}
				continue
			}
			if strings.HasPrefix(line, tag+" ") {
				return line, nil
			}
		}
	}
	line, err := tagged("A1")
	if err != nil {
		return "", "", fmt.Errorf("read AUTHENTICATE answer: %w", err)
	}
	if !strings.HasPrefix(line, "A1 OK") {
		return line, "", errors.New("refused")
	}
	if _, err := conn.Write([]byte("A2 EXAMINE INBOX\r\n")); err != nil {
		return "", "", err
	}
	exists := ""
	for {
		line, err := readIMAPLine(r)
		if err != nil {
			return "", "", fmt.Errorf("read EXAMINE answer: %w", err)
		}
		if n, ok := strings.CutSuffix(line, " EXISTS"); ok && strings.HasPrefix(n, "* ") {
			exists = strings.TrimPrefix(n, "* ")
		}
		if strings.HasPrefix(line, "A2 ") {
			if !strings.HasPrefix(line, "A2 OK") {
				return line, "", errors.New("EXAMINE INBOX refused")
			}
			break
		}
	}
	conn.Write([]byte("A3 LOGOUT\r\n"))
	return "", fmt.Sprintf("accepted; INBOX opened (%s messages)", exists), nil
}
