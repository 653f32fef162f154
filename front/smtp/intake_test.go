package smtp

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"mailproxy/auth"
	"mailproxy/config"
	"mailproxy/internal/fake365"
	"mailproxy/smtpclient"
	"mailproxy/spool"
	"mailproxy/submit"
	"mailproxy/upstream"
)

// testIntake is the daemon's part in small: loopback is a device (or not),
// and some accounts spool.
type testIntake struct {
	device string // the device at 127.0.0.1; "" = none

	mu         sync.Mutex // protects sp, spoolUsers
	sp         *spool.Spool
	spoolUsers map[string]bool
}

func (ti *testIntake) spool() *spool.Spool {
	ti.mu.Lock()
	defer ti.mu.Unlock()
	return ti.sp
}

func (ti *testIntake) setSpoolUser(u string) {
	ti.mu.Lock()
	defer ti.mu.Unlock()
	ti.spoolUsers[u] = true
}

func (ti *testIntake) Anonymous(remote netip.Addr) (submit.Submitter, string) {
	if ti.device == "" || !remote.IsLoopback() {
		return nil, ""
	}
	return ti.spool().NewSession(spool.Intake{Device: ti.device, Account: testUser, Mailbox: testUser,
		EnvelopeFrom: spool.RepairAccount, HeaderFrom: spool.RepairFix}), ti.device
}

func (ti *testIntake) Authenticated(g *auth.Grant, _ netip.Addr) submit.Submitter {
	ti.mu.Lock()
	ok := ti.spoolUsers[g.Username]
	ti.mu.Unlock()
	if !ok {
		return nil
	}
	return ti.spool().NewSession(spool.Intake{Account: g.Username, Mailbox: g.Mailbox})
}

// spoolEnv is a front whose Intake spools, and whose spool delivers to
// the fake upstream through smtpclient, as the daemon wires it.
func spoolEnv(t *testing.T, device string, o envOpts) (*env, *testIntake, chan []byte) {
	t.Helper()
	ti := &testIntake{device: device, spoolUsers: map[string]bool{}}
	prev := o.server
	o.server = func(s *Server) {
		s.Intake = ti
		if prev != nil {
			prev(s)
		}
	}
	e := newEnv(t, o)
	delivered := make(chan []byte, 16)
	e.up.SetDeliver(func(m fake365.Message) { delivered <- m.Data })
	st, err := spool.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	up := &upstream.Upstream{Addr: map[string]string{"smtp": e.up.Addr}, TLS: e.ca.ClientTLS()}
	open := smtpclient.Opener(smtpclient.Options{Addr: e.up.Addr, TLS: up.TLSFor(e.up.Addr), Domain: "proxy.test"})
	sp, err := spool.New(st, spool.Options{Rate: 6000, Logger: slog.New(slog.DiscardHandler),
		Open: spool.AccountOpener(func(ctx context.Context, account string) (*spool.Account, error) {
			return &spool.Account{Identity: testUser, Tokens: e.tokens, Open: func(ctx context.Context, id, tok string) (spool.Submitter, error) {
				return open(ctx, id, tok)
			}}, nil
		})})
	if err != nil {
		t.Fatal(err)
	}
	sp.Start()
	t.Cleanup(func() { sp.Shutdown(context.Background()) })
	ti.mu.Lock()
	ti.sp = sp
	ti.mu.Unlock()
	return e, ti, delivered
}

func waitDelivered(t *testing.T, ch chan []byte) []byte {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(testWait):
		t.Fatal("the spool delivered nothing upstream")
	}
	return nil
}

func waitDeliveredOrLog(t *testing.T, ti *testIntake, ch chan []byte) []byte {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(testWait):
	}
	recs, _, _ := ti.spool().List(spool.Query{})
	for _, r := range recs {
		t.Logf("spool record %+v", *r)
	}
	t.Fatal("the spool delivered nothing upstream")
	return nil
}

func TestDeviceWithoutAuthIsSpooled(t *testing.T) {
	e, _, delivered := spoolEnv(t, "mfp-floor2", envOpts{})
	c := e.dial()
	msg := []byte("From: mfp@printer.local <mfp@printer.local>\r\nSubject: scan\r\n\r\nscan body\r\n.dot\r\n")
	reply, err := send(t, c, "mfp@printer.local", []string{"bob@example.com"}, msg)
	if err != nil || !strings.HasPrefix(reply, "2.0.0 Ok: queued as ") {
		t.Fatalf("send without AUTH from a device = %q, %v; want 250 with the queue id", reply, err)
	}
	got := waitDelivered(t, delivered)
	want := "From: <mfp@printer.local>\r\nSubject: scan\r\n\r\nscan body\r\n.dot\r\n"
	if string(got) != want {
		t.Errorf("upstream got %q, want %q (From repaired, body as sent)", got, want)
	}
	if m := e.up.Messages()[0]; m.From != testUser {
		t.Errorf("upstream MAIL FROM = %q, want the mailbox %s", m.From, testUser)
	}
}

func TestNotADeviceGets530(t *testing.T) {
	e, _, _ := spoolEnv(t, "", envOpts{})
	c := e.dial()
	err := c.Mail("mfp@printer.local", nil)
	wantSMTPError(t, "MAIL without AUTH from outside every device's from", err, 530, smtp.EnhancedCode{5, 7, 0}, "")
}

func TestSpoolAccountAuthenticated(t *testing.T) {
	e, ti, delivered := spoolEnv(t, "", envOpts{})
	ti.setSpoolUser(testUser)
	c := e.login()
	reply, err := send(t, c, testUser, []string{"bob@example.com"}, testMessage("spooled"))
	if err != nil || !strings.HasPrefix(reply, "2.0.0 Ok: queued as ") {
		t.Fatalf("send = %q, %v", reply, err)
	}
	if got := waitDelivered(t, delivered); !bytes.Equal(got, testMessage("spooled")) {
		t.Errorf("upstream got %q", got)
	}
}

func TestDeviceSwaksAndSmtplib(t *testing.T) {
	e, ti, delivered := spoolEnv(t, "mfp", envOpts{})
	host, port, _ := strings.Cut(e.addr, ":")
	if swaks, err := exec.LookPath("swaks"); err != nil {
		t.Log("swaks not installed: skipping its part")
	} else {
		out, err := exec.Command(swaks, "--server", host, "--port", port, "--from", "scanner@printer.local",
			"--to", "bob@example.com", "--header", "Subject: swaks scan", "--body", "from swaks").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "250 2.0.0 Ok: queued as ") {
			t.Fatalf("swaks without AUTH: %v\n%s", err, out)
		}
		if got := waitDeliveredOrLog(t, ti, delivered); !strings.Contains(string(got), "from swaks") {
			t.Errorf("swaks message upstream: %q", got)
		}
	}
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed: skipping the smtplib part")
	}
	script := `import smtplib, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=20)
s.ehlo("mfp")
code, text = s.mail("scanner@printer.local")[0], None
s.rcpt("bob@example.com")
code, text = s.data(b"Subject: smtplib scan\r\n\r\nfrom smtplib\r\n")
print(code, text.decode())
s.quit()`
	out, err := exec.Command(python, "-c", script, host, port).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "250 2.0.0 Ok: queued as ") {
		t.Fatalf("smtplib without AUTH: %v\n%s", err, out)
	}
	if got := waitDelivered(t, delivered); !strings.Contains(string(got), "from smtplib") {
		t.Errorf("smtplib message upstream: %q", got)
	}
}

// A device that speaks only TLS 1.0 (with a CBC suite) gets through a
// listener set to tls_min_version = "1.0".
func TestDeviceTLS10(t *testing.T) {
	e, _, delivered := spoolEnv(t, "old-mfp", envOpts{frontTLS: true, server: func(s *Server) {
		s.TLSConfig.MinVersion = tls.VersionTLS10
		s.TLSConfig.CipherSuites = config.LegacyCipherSuites()
	}})
	cfg := e.ca.ClientTLS()
	cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS10, tls.VersionTLS10
	cfg.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}
	c, err := smtp.DialStartTLS(e.addr, cfg)
	if err != nil {
		t.Fatalf("STARTTLS with TLS 1.0: %v", err)
	}
	defer c.Close()
	// MaxVersion 1.0 on the client: the handshake above was TLS 1.0.
	if _, err := send(t, c, "old@printer.local", []string{"bob@example.com"}, []byte("Subject: tls10\r\n\r\nold\r\n")); err != nil {
		t.Fatal(err)
	}
	if got := waitDelivered(t, delivered); !strings.Contains(string(got), "old") {
		t.Errorf("upstream got %q", got)
	}
}
