package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"

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

// upstreamHello is what the upstream role tells the orchestrator.
type upstreamHello struct {
	IMAP      string `json:"imap"`
	SMTP      string `json:"smtp"`
	CAPEM     string `json:"ca_pem"`
	TokenURL  string `json:"token_url"`
	FetchSize int64  `json:"fetch_size"`
	Mailboxes int    `json:"fetch_mailboxes"`
	PID       int    `json:"pid"`
}

// runUpstream is the fake Microsoft 365 process. Commands:
//
//	rt      a new refresh token for benchUser (each holder needs its own:
//	        refresh tokens rotate)
//	conns   open IMAP and SMTP connections, "IMAP SMTP"
func runUpstream(args []string, in io.Reader, out io.Writer) error {
	fs := flag.NewFlagSet("upstream", flag.ContinueOnError)
	fetchSize := fs.Int64("fetch-size", 100<<20, "bytes of the message in each FETCH mailbox")
	mailboxes := fs.Int("fetch-mailboxes", 8, "FETCH mailboxes")
	linkMiBps := fs.Float64("link-mibps", 0, "put the IMAP upstream behind a link of this many MiB/s (0: none)")
	if err := fs.Parse(args); err != nil {
		return err
	}

	ca, err := fake365.NewCA()
	if err != nil {
		return err
	}
	srvTLS, err := ca.ServerTLS()
	if err != nil {
		return err
	}
	idp, err := fake365.NewIdP()
	if err != nil {
		return err
	}
	defer idp.Close()
	idp.AddClient(fake365.Client{ID: benchClientID})
	idp.AddUser(benchUser)

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
	if *mailboxes > 0 {
		msg := makeMessage(*fetchSize, "FETCH benchmark message", 'f')
		for i := range *mailboxes {
			mb := fetchMailbox(i)
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

	_, tokenURL, _ := idp.Endpoints("contoso.test")
	if err := writeJSONLine(out, upstreamHello{
		IMAP:      imapAddr,
		SMTP:      smtpUp.Addr,
		CAPEM:     string(ca.CertPEM),
		TokenURL:  tokenURL,
		FetchSize: *fetchSize,
		Mailboxes: *mailboxes,
		PID:       os.Getpid(),
	}); err != nil {
		return err
	}
	return serveCommands(in, out, func(cmd, arg string) (string, error) {
		switch cmd {
		case "rt":
			return idp.GrantRefreshToken(benchClientID, benchUser, benchScopes), nil
		case "conns":
			return fmt.Sprintf("%d %d", imapUp.Conns(), smtpUp.Conns()), nil
		}
		return "", fmt.Errorf("unknown command %q", cmd)
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
