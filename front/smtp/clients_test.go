package smtp

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// pythonSend is run by python3: it logs in to the proxy with smtplib in the
// way argv says and sends stdin as the message.
const pythonSend = `
import smtplib, ssl, sys
host, port, mode, user, password, cafile = sys.argv[1:7]
s = smtplib.SMTP(host, int(port), timeout=20)
s.ehlo("python")
if mode == "starttls":
    s.starttls(context=ssl.create_default_context(cafile=cafile))
    s.ehlo("python")
s.user, s.password = user, password
if mode == "login-ir":
    s.auth("LOGIN", s.auth_login, initial_response_ok=True)
elif mode == "login-prompted":
    s.auth("LOGIN", s.auth_login, initial_response_ok=False)
else:
    s.auth("PLAIN", s.auth_plain)
msg = sys.stdin.buffer.read()
if mode == "utf8-dsn":
    s.sendmail("jörg@contoso.com", ["bob@example.com"], msg,
               mail_options=["SMTPUTF8", "RET=HDRS", "ENVID=py-1"],
               rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
else:
    s.sendmail("alice@contoso.com", ["bob@example.com"], msg)
s.quit()
`

func TestPythonSmtplib(t *testing.T) {
	t.Parallel()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not found; skipping the smtplib test")
	}
	e := newEnv(t, envOpts{frontTLS: true})
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, e.ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(e.addr, ":")
	modes := []string{"plain", "login-ir", "login-prompted", "starttls", "utf8-dsn"}
	for i, mode := range modes {
		msg := []byte("Subject: python " + mode + "\r\n\r\nHello from smtplib.\r\n.dot line\r\n")
		ctx, cancel := context.WithTimeout(context.Background(), testWait)
		cmd := exec.CommandContext(ctx, python, "-c", pythonSend, host, port, mode, testUser, testPassword, caFile)
		cmd.Stdin = bytes.NewReader(msg)
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("python smtplib %s: %v\n%s", mode, err, out)
		}
		msgs := e.up.Messages()
		if len(msgs) != i+1 {
			t.Fatalf("python smtplib %s: upstream has %d messages, want %d", mode, len(msgs), i+1)
		}
		m := msgs[i]
		if !bytes.Equal(m.Data, msg) {
			t.Errorf("python smtplib %s: upstream Data = %q, want %q", mode, m.Data, msg)
		}
		if m.MailOpts.Size != int64(len(msg)) {
			t.Errorf("python smtplib %s: upstream SIZE = %d, want %d", mode, m.MailOpts.Size, len(msg))
		}
		if mode == "utf8-dsn" {
			o := m.MailOpts
			if m.From != "jörg@contoso.com" || !o.UTF8 || o.Return != "HDRS" || o.EnvelopeID != "py-1" {
				t.Errorf("python smtplib %s: upstream From %q MailOpts %+v, want jörg@contoso.com SMTPUTF8 RET=HDRS ENVID=py-1", mode, m.From, o)
			}
			if got := fmt.Sprint(m.Rcpts[0].Opts.Notify); got != "[SUCCESS FAILURE]" {
				t.Errorf("python smtplib %s: upstream NOTIFY = %s, want [SUCCESS FAILURE]", mode, got)
			}
		}
	}
}

func TestCurl(t *testing.T) {
	t.Parallel()
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not found; skipping the curl test")
	}
	e := newEnv(t, envOpts{})
	msg := []byte("From: alice@contoso.com\r\nTo: bob@example.com\r\nSubject: curl\r\n\r\nHello from curl.\r\n")
	f := filepath.Join(t.TempDir(), "msg.eml")
	if err := os.WriteFile(f, msg, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, curl, "-sS", "--max-time", "20", "smtp://"+e.addr,
		"--mail-from", "alice@contoso.com", "--mail-rcpt", "bob@example.com",
		"--upload-file", f, "--user", testUser+":"+testPassword)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	checkDelivered(t, e, "alice@contoso.com", []string{"bob@example.com"}, msg)
}
