package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"mailproxy/config"
	"mailproxy/smtpclient"
)

// testMessageTimeout bounds SendTest: token, dial, TLS, AUTH, MAIL, RCPT,
// DATA.
const testMessageTimeout = time.Minute

// SendTest sends a short test message from the account's mailbox to `to`
// through the real upstream path (the account's token, the provider's SMTP
// server) and returns the upstream's reply to the message. A delegated
// account's tokens are opened with its local password; client_credentials
// accounts need none. The admin page's "Send a test message" calls it.
func (d *Daemon) SendTest(ctx context.Context, username, password, to string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, testMessageTimeout)
	defer cancel()
	d.mu.Lock()
	cfg := d.cfg
	app := d.apps[strings.ToLower(username)]
	d.mu.Unlock()
	acct := cfg.Account(username)
	if acct == nil {
		return "", fmt.Errorf("no account %q", username)
	}
	if to == "" || !strings.Contains(to, "@") || strings.ContainsAny(to, "<>\r\n ") {
		return "", fmt.Errorf("%q is not an address", to)
	}
	mailbox := acct.Mailbox
	if mailbox == "" {
		mailbox = acct.Username
	}
	identity := mailbox
	var token string
	var err error
	if acct.Flow == config.FlowClientCredentials {
		if app == nil {
			return "", errors.New("the account has no app token source")
		}
		token, err = app.Token(ctx)
	} else {
		src, who, oerr := d.manager.Open(ctx, acct.Username, password)
		if oerr != nil {
			return "", oerr
		}
		if who != "" {
			identity = who
		}
		token, err = src.Token(ctx)
	}
	if err != nil {
		return "", fmt.Errorf("get the access token: %w", err)
	}
	up := UpstreamFor(acct.Provider)
	addr := acct.Provider.SMTPServer
	c, err := smtpclient.Open(ctx, smtpclient.Options{Addr: addr, TLS: up.TLSFor(addr), Domain: cfg.SMTP.Domain}, identity, token)
	if err != nil {
		return "", fmt.Errorf("sign in at %s as %s: %w", addr, identity, err)
	}
	defer c.Close()
	if err := c.Mail(mailbox, nil); err != nil {
		return "", fmt.Errorf("MAIL FROM:<%s>: %w", mailbox, err)
	}
	if err := c.Rcpt(to, nil); err != nil {
		return "", fmt.Errorf("RCPT TO:<%s>: %w", to, err)
	}
	reply, err := c.Data(bytes.NewReader(TestMessage(mailbox, to, time.Now())))
	if err != nil {
		return "", fmt.Errorf("DATA: %w", err)
	}
	c.Quit()
	return reply, nil
}

// TestMessage is the short message `check -send-to` and the admin page
// send.
func TestMessage(from, to string, now time.Time) []byte {
	return []byte("From: <" + from + ">\r\nTo: <" + to + ">\r\nSubject: mailproxy test message\r\nDate: " + now.Format(time.RFC1123Z) +
		"\r\nMessage-ID: <test-" + strconv.FormatInt(now.UnixNano(), 36) + "@mailproxy>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" +
		"This is a test message sent by mailproxy through the upstream SMTP server, to check that this account can send.\r\n")
}
