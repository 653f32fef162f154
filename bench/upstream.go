package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"mailproxy/internal/dovecot"
	"mailproxy/internal/fake365"
)

// The fake tenant. Every mailbox belongs to, or is delegated to, benchUser,
// so one refresh token chain serves them all.
const (
	benchClientID = "bench-client"
	benchUser     = "bench@contoso.test"
)

// benchScopes are what the bench tokens are granted and refreshed with.
var benchScopes = []string{
	"https://outlook.office.com/IMAP.AccessAsUser.All",
	"https://outlook.office.com/SMTP.Send",
	"offline_access",
}

// fetchMailbox is the mailbox of parallel FETCH client i (from 0): one
// each, because the fake upstream (imapmemserver) holds the mailbox lock
// while it writes a FETCH response, which would serialize clients sharing
// one mailbox and let one stalled client block the rest.
func fetchMailbox(i int) string { return "fetch" + strconv.Itoa(i+1) + "@contoso.test" }

// newTenant starts the fake tenant every upstream role has: a CA and the
// TLS config of a server certificate it signed, and an IdP that knows
// benchClientID and benchUser. The caller closes the IdP.
func newTenant() (*fake365.CA, *tls.Config, *fake365.IdP, error) {
	ca, err := fake365.NewCA()
	if err != nil {
		return nil, nil, nil, err
	}
	srvTLS, err := ca.ServerTLS()
	if err != nil {
		return nil, nil, nil, err
	}
	idp, err := fake365.NewIdP()
	if err != nil {
		return nil, nil, nil, err
	}
	idp.AddClient(fake365.Client{ID: benchClientID})
	idp.AddUser(benchUser)
	return ca, srvTLS, idp, nil
}

// tenantTokenURL is the token endpoint the bench's clients use.
func tenantTokenURL(idp *fake365.IdP) string {
	_, tokenURL, _ := idp.Endpoints("contoso.test")
	return tokenURL
}

// upstreamHello is what the upstream role tells the orchestrator.
type upstreamHello struct {
	IMAP      string `json:"imap"`
	SMTP      string `json:"smtp"`
	CAPEM     string `json:"ca_pem"`
	TokenURL  string `json:"token_url"`
	FetchSize int64  `json:"fetch_size"`
	Mailboxes int    `json:"fetch_mailboxes"`
	PID       int    `json:"pid"`
	// Kind is the IMAP server: "fake365" or "dovecot".
	Kind string `json:"kind"`
	// MailboxNames are the FETCH mailboxes, Mailboxes of them. Dovecot
	// checks that a token is the mailbox owner's, and it has no mailbox
	// lock that would serialize clients, so there they are all benchUser.
	MailboxNames []string `json:"mailbox_names"`
}

// runUpstream is the fake Microsoft 365 process. Commands:
//
//	rt      a new refresh token for benchUser (each holder needs its own:
//	        refresh tokens rotate)
//	conns   open IMAP and SMTP connections, "IMAP SMTP"
//	records N   IMAP connections from now on write TLS records of N bytes
//	            (fake365 only: Dovecot chooses its own, 4 KiB)
//	append MAILBOX   deliver a small message to MAILBOX's INBOX (IDLE)
func runUpstream(args []string, in io.Reader, out io.Writer) error {
	fs := flag.NewFlagSet("upstream", flag.ContinueOnError)
	fetchSize := fs.Int64("fetch-size", 100<<20, "bytes of the message in each FETCH mailbox")
	mailboxes := fs.Int("fetch-mailboxes", 8, "FETCH mailboxes")
	linkMiBps := fs.Float64("link-mibps", 0, "put the IMAP upstream behind a link of this many MiB/s (0: none)")
	useDovecot := fs.Bool("dovecot", false, "serve IMAP with a private Dovecot instead of fake365's server")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *useDovecot {
		return runDovecotUpstream(*fetchSize, *mailboxes, *linkMiBps, in, out)
	}

	ca, srvTLS, idp, err := newTenant()
	if err != nil {
		return err
	}
	defer idp.Close()

	imapUp, err := fake365.NewIMAPUpstream(idp, srvTLS)
	if err != nil {
		return err
	}
	defer imapUp.Close()
	smtpUp, err := fake365.NewSMTPUpstream(idp, srvTLS, false)
	if err != nil {
		return err
	}
	defer smtpUp.Close()

	imapUp.AddMailbox(benchUser)
	var names []string
	if *mailboxes > 0 {
		msg := makeMessage(*fetchSize, "FETCH benchmark message", 'f')
		for i := range *mailboxes {
			mb := fetchMailbox(i)
			names = append(names, mb)
			imapUp.AddMailbox(mb)
			imapUp.Delegate(mb, benchUser)
			if err := imapUp.Append(mb, "INBOX", msg); err != nil {
				return err
			}
		}
	}

	imapAddr := imapUp.Addr
	if *linkMiBps > 0 {
		l, err := newSlowLink(imapUp.Addr, *linkMiBps*(1<<20))
		if err != nil {
			return err
		}
		defer l.Close()
		imapAddr = l.Addr().String()
	}

	return serveUpstream(in, out, idp, upstreamHello{
		IMAP:         imapAddr,
		SMTP:         smtpUp.Addr,
		CAPEM:        string(ca.CertPEM),
		FetchSize:    *fetchSize,
		Mailboxes:    *mailboxes,
		Kind:         "fake365",
		MailboxNames: names,
	}, upstreamServer{
		conns: func() string { return fmt.Sprintf("%d %d", imapUp.Conns(), smtpUp.Conns()) },
		records: func(arg string) error {
			n, err := strconv.Atoi(arg)
			if err != nil {
				return fmt.Errorf("records: %q is not a size", arg)
			}
			imapUp.SetRecordSize(n)
			return nil
		},
		deliver: func(mailbox string) error { return imapUp.Append(mailbox, "INBOX", []byte(idleMessage)) },
	})
}

// upstreamServer is what the fake365 and the Dovecot upstream roles do
// each their own way.
type upstreamServer struct {
	conns   func() string         // the open IMAP and SMTP connections, "IMAP SMTP"
	records func(n string) error  // IMAP connections from now on write TLS records of n bytes
	deliver func(to string) error // deliver idleMessage to a mailbox's INBOX
}

// serveUpstream says hello (with the tenant's token URL and this process's
// PID) and answers the orchestrator's commands (see runUpstream).
func serveUpstream(in io.Reader, out io.Writer, idp *fake365.IdP, hello upstreamHello, s upstreamServer) error {
	hello.TokenURL, hello.PID = tenantTokenURL(idp), os.Getpid()
	if err := writeJSONLine(out, hello); err != nil {
		return err
	}
	return serveCommands(in, out, func(cmd, arg string) (string, error) {
		switch cmd {
		case "rt":
			return idp.GrantRefreshToken(benchClientID, benchUser, benchScopes), nil
		case "conns":
			return s.conns(), nil
		case "records":
			return "ok", s.records(arg)
		case "append":
			return "ok", s.deliver(arg)
		}
		return "", fmt.Errorf("unknown command %q", cmd)
	})
}

// idleMessage is what "append" delivers: small, like a new mail an IDLE
// client is told about.
const idleMessage = "From: <" + benchUser + ">\r\nSubject: new mail\r\n\r\nHello.\r\n"

// runDovecotUpstream is the upstream role with a private Dovecot as the
// IMAP server (internal/dovecot), its oauth2 passdb asking the fake IdP
// about tokens; SMTP stays fake365's.
func runDovecotUpstream(fetchSize int64, mailboxes int, linkMiBps float64, in io.Reader, out io.Writer) error {
	if err := dovecot.Available(); err != nil {
		return err
	}
	if linkMiBps > 0 {
		return fmt.Errorf("-link-mibps is not supported with Dovecot")
	}
	ca, srvTLS, idp, err := newTenant()
	if err != nil {
		return err
	}
	defer idp.Close()
	smtpUp, err := fake365.NewSMTPUpstream(idp, srvTLS, false)
	if err != nil {
		return err
	}
	defer smtpUp.Close()

	dir, err := os.MkdirTemp("", "mailproxy-bench-dovecot-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	certPEM, keyPEM, err := ca.LeafPEM("127.0.0.1")
	if err != nil {
		return err
	}
	dv, err := dovecot.Start(context.Background(), dovecot.Config{
		Dir: dir, IntrospectionURL: idp.IntrospectionURL("contoso.test"), CertPEM: certPEM, KeyPEM: keyPEM,
	})
	if err != nil {
		return err
	}
	defer dv.Close()
	var names []string
	if mailboxes > 0 {
		if err := dv.Deliver(benchUser, makeMessage(fetchSize, "FETCH benchmark message", 'f')); err != nil {
			return err
		}
		for range mailboxes {
			names = append(names, benchUser)
		}
	}
	return serveUpstream(in, out, idp, upstreamHello{
		IMAP:         dv.IMAPS,
		SMTP:         smtpUp.Addr,
		CAPEM:        string(ca.CertPEM),
		FetchSize:    fetchSize,
		Mailboxes:    mailboxes,
		Kind:         "dovecot",
		MailboxNames: names,
	}, upstreamServer{
		conns:   func() string { return fmt.Sprintf("0 %d", smtpUp.Conns()) },
		records: func(string) error { return errors.New("the TLS record size is chosen by Dovecot itself") },
		deliver: func(mailbox string) error { return dv.Deliver(strings.ToLower(mailbox), []byte(idleMessage)) },
	})
}

// makeMessage returns an RFC 5322 message of exactly size bytes (at least
// a header's worth): a header, then lines of 76 printable characters like
// a base64 attachment. seed varies the text between message kinds.
func makeMessage(size int64, subject string, seed byte) []byte {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	head := "From: Bench Sender <" + benchUser + ">\r\n" +
		"To: Bench Receiver <" + benchUser + ">\r\n" +
		"Subject: " + subject + "\r\n" +
		"Date: Mon, 02 Jan 2006 15:04:05 +0000\r\n" +
		"Message-ID: <bench-" + strconv.FormatInt(size, 10) + "-" + string(seed) + "@contoso.test>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=us-ascii\r\n" +
		"\r\n"
	if size < int64(len(head))+2 {
		size = int64(len(head)) + 2
	}
	b := make([]byte, size)
	body := b[copy(b, head):]
	x := uint32(seed) | 1
	for len(body) > 0 {
		// Lines of 76 characters and CRLF; the last one takes what is
		// left (at least CRLF: never a lone byte).
		ll := 78
		if len(body) < ll || len(body) == ll+1 {
			ll = len(body)
		}
		for i := range ll - 2 {
			x ^= x << 13
			x ^= x >> 17
			x ^= x << 5
			body[i] = alphabet[x&63]
		}
		body[ll-2], body[ll-1] = '\r', '\n'
		body = body[ll:]
	}
	return b
}
