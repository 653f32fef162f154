package smtp

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
)

// rawUpstream is a submission server that keeps exactly what it was sent:
// each command line, and each message's bytes between the 354 and the
// CRLF "." CRLF that ends it, as they came over the wire.
type rawUpstream struct {
	mu    sync.Mutex // protects the fields below
	lines []string
	data  [][]byte
}

func (u *rawUpstream) serve(conn net.Conn, r *bufio.Reader) {
	w := func(s string) { io.WriteString(conn, s) }
	w("220 raw ESMTP\r\n")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		u.mu.Lock()
		u.lines = append(u.lines, line)
		u.mu.Unlock()
		verb, _, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			w("250-raw\r\n250-AUTH XOAUTH2\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 SIZE 100000000\r\n")
		case "AUTH":
			w("235 2.7.0 Authentication successful\r\n")
		case "QUIT":
			w("221 2.0.0 Bye\r\n")
			return
		case "DATA":
			w("354 go ahead\r\n")
			var msg []byte
			end := []byte("\r\n.\r\n")
			for !bytes.HasSuffix(append([]byte("\r\n"), msg...), end) {
				c, err := r.ReadByte()
				if err != nil {
					return
				}
				msg = append(msg, c)
			}
			u.mu.Lock()
			u.data = append(u.data, msg)
			u.mu.Unlock()
			w("250 2.0.0 OK queued\r\n")
		default:
			w("250 2.1.0 OK\r\n")
		}
	}
}

func (u *rawUpstream) received() (lines []string, data [][]byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.lines...), append([][]byte(nil), u.data...)
}

// Every end-of-data variant of the 2023 SMTP smuggling research, inside a
// message followed by a smuggled transaction: the upstream must get one
// message whose only end is the real one, with no bare CR or LF left that
// a lenient receiver could take for a line end, and no smuggled command.
func TestSmugglingVariants(t *testing.T) {
	t.Parallel()
	smuggled := "MAIL FROM:<ceo@contoso.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nfake\r\n"
	variants := []string{"\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r", "\r.\r\n", "\r\n.\r", "\n.\r", "\r.\n", "\r\n\x00.\r\n"}
	u := &rawUpstream{}
	e := newEnv(t, envOpts{upstreamScript: u.serve})
	r := e.session()
	for _, v := range variants {
		msg := "Subject: real\r\n\r\nhello" + v + smuggled + "\r\n.\r\n"
		if rep := r.sendRaw([]byte(msg)); !strings.HasPrefix(rep, "250 ") {
			t.Fatalf("reply to a message with %q = %q, want 250", v, rep)
		}
	}
	r.mustCmd("QUIT", "221 ")
	lines, data := u.received()
	if len(data) != len(variants) {
		t.Fatalf("upstream got %d messages, want %d", len(data), len(variants))
	}
	mails := 0
	for _, l := range lines {
		if strings.HasPrefix(strings.ToUpper(l), "MAIL FROM:") {
			mails++
			if strings.Contains(l, "ceo@") {
				t.Errorf("smuggled command reached the upstream as a command: %q", l)
			}
		}
	}
	if mails != len(variants) {
		t.Errorf("upstream got %d MAIL commands, want %d", mails, len(variants))
	}
	for i, d := range data {
		for j := 0; j < len(d); j++ {
			if d[j] == '\n' && (j == 0 || d[j-1] != '\r') || d[j] == '\r' && (j+1 == len(d) || d[j+1] != '\n') {
				t.Errorf("message with %q: bare CR or LF at byte %d upstream: %q", variants[i], j, d)
				break
			}
		}
		// The body as a lenient receiver splits it: no line is a lone dot
		// before the real end.
		body := d[:len(d)-len(".\r\n")]
		for _, l := range strings.Split(string(body), "\r\n") {
			if l == "." {
				t.Errorf("message with %q: a line of a lone dot reached the upstream unstuffed: %q", variants[i], d)
			}
		}
		if !bytes.Contains(d, []byte("\r\n..\r\nMAIL FROM:<ceo@contoso.com>")) && !bytes.Contains(d, []byte("MAIL FROM:<ceo@contoso.com>")) {
			t.Errorf("message with %q lost its smuggled part (it is data and must be delivered as such): %q", variants[i], d)
		}
	}
}

// Quoted local parts leave quoted, and no part of an address can become
// an ESMTP parameter.
func TestQuotedLocalPartsUpstream(t *testing.T) {
	t.Parallel()
	u := &rawUpstream{}
	e := newEnv(t, envOpts{upstreamScript: u.serve})
	r := e.session()
	r.mustCmd(`MAIL FROM:<"x> BODY=BINARYMIME y"@contoso.com>`, "250 ")
	r.mustCmd(`RCPT TO:<"john doe"@example.com>`, "250 ")
	r.mustCmd(`RCPT TO:<"a\"b\\c"@example.com>`, "250 ")
	r.mustCmd("DATA", "354 ")
	if _, err := io.WriteString(r.c, "Subject: q\r\n\r\nx\r\n.\r\n"); err != nil {
		t.Fatal(err)
	}
	if rep := r.reply(); !strings.HasPrefix(rep, "250 ") {
		t.Fatalf("DATA = %q", rep)
	}
	r.mustCmd("QUIT", "221 ")
	lines, _ := u.received()
	want := map[string]bool{
		"MAIL FROM:<\"x> BODY=BINARYMIME y\"@contoso.com> BODY=8BITMIME\r\n": false,
		"RCPT TO:<\"john doe\"@example.com>\r\n":                             false,
		"RCPT TO:<\"a\\\"b\\\\c\"@example.com>\r\n":                          false,
	}
	for _, l := range lines {
		if _, ok := want[l]; ok {
			want[l] = true
		}
		if strings.Contains(l, "BODY=BINARYMIME") && !strings.Contains(l, `"x> BODY=BINARYMIME y"`) {
			t.Errorf("client text became a parameter upstream: %q", l)
		}
	}
	for l, seen := range want {
		if !seen {
			t.Errorf("upstream did not get %q; got %q", l, lines)
		}
	}
}
