package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"mailproxy/config"
	"mailproxy/graph"
	"mailproxy/smtpclient"
	"mailproxy/submit"
)

// testMessageTimeout bounds SendTest: token, dial, TLS, AUTH, MAIL, RCPT,
// DATA.
const testMessageTimeout = time.Minute

// SendTest sends a short test message from the account's mailbox to `to`
// through the real upstream path (the account's token, the provider's SMTP
// server, or Microsoft Graph for send_via = "graph") and returns the
// upstream's reply to the message. A delegated account's tokens are opened with its local password; client_credentials
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
	var tokens interface {
		Token(ctx context.Context) (string, error)
	}
	if acct.Flow == config.FlowClientCredentials {
		if app == nil {
			return "", errors.New("the account has no app token source")
		}
		tokens = app
	} else {
		src, who, err := d.manager.Open(ctx, acct.Username, password)
		if err != nil {
			return "", err
		}
		if who != "" {
			identity = who
		}
		tokens = src
	}
	if acct.SendVia == config.SendViaGraph {
		sess, err := d.graphs.session(ctx, acct, tokens)
		if err != nil {
			return "", err
		}
		defer sess.Close()
		return SendTestMessage(sess, mailbox, to, time.Now())
	}
	token, err := tokens.Token(ctx)
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
	return SendTestMessage(c, mailbox, to, time.Now())
}

// SendTestMessage sends TestMessage from `from` to `to` through s (the
// upstream SMTP client or a Graph session) and returns the upstream's
// reply to it. Its errors keep the upstream's *smtp.SMTPError.
func SendTestMessage(s submit.Submitter, from, to string, now time.Time) (string, error) {
	if err := s.Mail(from, nil); err != nil {
		return "", fmt.Errorf("MAIL FROM:<%s>: %w", from, err)
	}
	if err := s.Rcpt(to, nil); err != nil {
		return "", fmt.Errorf("RCPT TO:<%s>: %w", to, err)
	}
	reply, err := s.Data(bytes.NewReader(TestMessage(from, to, now)))
	if err != nil {
		return "", fmt.Errorf("DATA: %w", err)
	}
	s.Quit()
	return reply, nil
}

// NewGraphSession opens a Microsoft Graph session for account a (send_via
// = "graph") as serve does: the provider's graph_url and roots, the
// account's save_to_sent_items. tokens is the account's token source (an
// *oauth.Source or *oauth.AppSource), whose Graph source is used.
func NewGraphSession(ctx context.Context, a *config.Account, tokens any, logger *slog.Logger) (*graph.Session, error) {
	return newGraphSenders(logger).session(ctx, a, tokens)
}

// TestMessage is the short message `check -send-to` and the admin page
// send.
func TestMessage(from, to string, now time.Time) []byte {
	return []byte("From: <" + from + ">\r\nTo: <" + to + ">\r\nSubject: mailproxy test message\r\nDate: " + now.Format(time.RFC1123Z) +
		"\r\nMessage-ID: <test-" + strconv.FormatInt(now.UnixNano(), 36) + "@mailproxy>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" +
		"This is a test message sent by mailproxy through the upstream SMTP server, to check that this account can send.\r\n")
}
