package main

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"mailproxy/config"
	"mailproxy/upstream"
)

// pop3On reports whether the POP3 front is on: only then do POP3 servers
// matter to check.
func pop3On(cfg *config.Config) bool { return cfg.POP3.Listen != "" || cfg.POP3.ListenTLS != "" }

// checkPOP3 connects with implicit TLS (port 995), reads the greeting and
// asks for the capabilities (RFC 2449): SASL must list XOAUTH2.
func checkPOP3(ctx context.Context, addr string, base *tls.Config) (string, error) {
	conn, r, done, err := dialGreeting(ctx, addr, base, "+OK")
	if err != nil {
		return "", err
	}
	defer done()
	var line string
	if _, err := conn.Write([]byte("CAPA\r\n")); err != nil {
		return "", fmt.Errorf("send CAPA: %w", err)
	}
	if line, err = readIMAPLine(r); err != nil {
		return "", fmt.Errorf("read CAPA answer: %w", err)
	}
	if !strings.HasPrefix(line, "+OK") {
		return "", fmt.Errorf("CAPA answered %q", shorten(line))
	}
	xoauth2 := false
	for {
		line, err := readIMAPLine(r)
		if err != nil {
			return "", fmt.Errorf("read CAPA answer: %w", err)
		}
		if line == "." {
			break
		}
		if f := strings.Fields(line); len(f) > 0 && strings.EqualFold(f[0], "SASL") {
			for _, m := range f[1:] {
				xoauth2 = xoauth2 || strings.EqualFold(m, "XOAUTH2")
			}
		}
	}
	conn.Write([]byte("QUIT\r\n"))
	if !xoauth2 {
		return "", errors.New("TLS and greeting ok, but the server does not offer SASL XOAUTH2")
	}
	return "TLS ok, greeting +OK, SASL XOAUTH2 offered", nil
}

// pop3 signs in at the upstream POP3 server with XOAUTH2 and asks STAT.
func (a *accountCheck) pop3(ctx context.Context) {
	a.signIn(ctx, "POP3", a.acct.Provider.POP3Server, fmt.Sprintf("AUTH XOAUTH2 as %s", a.mailbox), pop3SignIn, func(string) fix { return a.pop3Fix() })
}

func (a *accountCheck) pop3Fix() fix {
	if a.appOnly {
		return fix{
			cause: "Exchange does not accept the app's token for POP3 on " + a.mailbox,
			todo: "grant the app the application permission POP.AccessAsApp with admin consent, and POP for the mailbox:\n" +
				"Set-CASMailbox -Identity " + a.mailbox + " -PopEnabled $true\n" +
				"(the service principal and Full Access are the same as for IMAP)",
		}
	}
	return fix{
		cause: "Exchange refused the token for POP3 on " + a.mailbox + " signed in as " + a.identity,
		todo: "sign the account in again if it was signed in before POP.AccessAsUser.All was among the scopes (mailproxy login " + a.acct.Username + "),\n" +
			"give the app the delegated permission POP.AccessAsUser.All with consent, and turn POP on for the mailbox:\n" +
			"Set-CASMailbox -Identity " + a.mailbox + " -PopEnabled $true",
	}
}

// pop3SignIn runs AUTH XOAUTH2 (two-step, as Microsoft documents it; an
// error challenge is answered with an empty line) and STAT. reply is the
// server's refusal, if it refused.
func pop3SignIn(ctx context.Context, addr string, base *tls.Config, user, token string) (reply, detail string, err error) {
	conn, r, done, err := dialGreeting(ctx, addr, base, "+OK")
	if err != nil {
		return "", "", err
	}
	defer done()
	send := func(s string) error {
		_, err := conn.Write([]byte(s + "\r\n"))
		return err
	}
	if err := send("AUTH XOAUTH2"); err != nil {
		return "", "", err
	}
	sent, answered := false, false
	for {
		line, err := readIMAPLine(r)
		if err != nil {
			return "", "", fmt.Errorf("read AUTH answer: %w", err)
		}
		switch {
		case strings.HasPrefix(line, "+OK"):
			if err := send("STAT"); err != nil {
				return "", "", err
			}
			stat, err := readIMAPLine(r)
			if err != nil {
				return "", "", fmt.Errorf("read STAT answer: %w", err)
			}
			send("QUIT")
			if !strings.HasPrefix(stat, "+OK") {
				return shorten(stat), "", errors.New("STAT refused")
			}
			f := strings.Fields(stat)
			n := "?"
			if len(f) > 1 {
				n = f[1]
			}
			return "", "accepted; STAT: " + n + " messages", nil
		case strings.HasPrefix(line, "+") && !sent:
			sent = true
			if err := send(base64.StdEncoding.EncodeToString(upstream.XOAuth2(user, token))); err != nil {
				return "", "", err
			}
		case strings.HasPrefix(line, "+") && !answered:
			answered = true
			if err := send(""); err != nil {
				return "", "", err
			}
		default:
			return shorten(line), "", errors.New("refused")
		}
	}
}
