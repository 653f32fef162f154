//go:build !windows

package main

import (
	"bytes"
	"errors"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"mailproxy/auth"
	"mailproxy/internal/fake365"
	"mailproxy/internal/testutil"
	"mailproxy/oauth"
	"mailproxy/oauth/store"
)

// serve with a [[device]] at 127.0.0.1 on a service-sealed account: the
// device sends without AUTH, gets 250 with a queue id, and the spool
// delivers upstream; `mailproxy queue list -all` shows it.
func TestServeDeviceRelay(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	h := startServeWith(t, func(text string) string {
		stateDir := regexp.MustCompile(`state_dir = "([^"]+)"`).FindStringSubmatch(text)[1]
		// What `mailproxy login` does for seal = "service": the demo's
		// tokens, sealed with the service key instead of its password.
		st, err := store.Open(filepath.Join(stateDir, "tokens"))
		if err != nil {
			t.Fatal(err)
		}
		entry, _, err := st.Unlock(demoUser, demoPassword)
		if err != nil {
			t.Fatal(err)
		}
		key, err := oauth.LoadServiceKey(stateDir, true)
		if err != nil {
			t.Fatal(err)
		}
		k, err := st.NewKey(key.Password(demoUser))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Save(demoUser, k, entry); err != nil {
			t.Fatal(err)
		}
		text = strings.Replace(text, "[[account]]\nusername = \""+demoUser+"\"\n", "[[account]]\nusername = \""+demoUser+"\"\nseal = \"service\"\n", 1)
		return text + "\n[[device]]\nname = \"mfp\"\nfrom = [\"127.0.0.1\"]\naccount = \"" + demoUser + "\"\n"
	})
	got := make(chan fake365.Message, 4)
	h.dm.smtpUp.SetDeliver(func(m fake365.Message) { got <- m })

	c, err := smtp.Dial(h.d.Addr("smtp").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Mail("scanner@printer.local", nil); err != nil {
		t.Fatalf("MAIL without AUTH from the device = %v", err)
	}
	if err := c.Rcpt("bob@example.com", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("From: scanner@printer.local <scanner@printer.local>\r\nSubject: scan\r\n\r\npage 1\r\n"))
	resp, err := w.CloseWithResponse()
	if err != nil || !strings.HasPrefix(resp.StatusText, "2.0.0 Ok: queued as ") {
		t.Fatalf("end of DATA = %+v, %v; want 250 with the queue id", resp, err)
	}
	id := strings.TrimPrefix(resp.StatusText, "2.0.0 Ok: queued as ")
	select {
	case m := <-got:
		if m.From != demoUser || !bytes.Contains(m.Data, []byte("From: <scanner@printer.local>\r\n")) || !bytes.HasSuffix(m.Data, []byte("\r\n\r\npage 1\r\n")) {
			t.Errorf("upstream got MAIL FROM %q, %q", m.From, m.Data)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the spool did not deliver; serve log:\n%s", h.logs.String())
	}
	var out testutil.Buffer
	env := &cmdEnv{stdin: strings.NewReader(""), stdout: &out, stderr: &out, getenv: func(string) string { return "" }}
	if code := run(t.Context(), env, []string{"queue", "-config", h.cfgFile, "show", id}); code != exitOK || !strings.Contains(out.String(), "device:    mfp") {
		t.Errorf("queue show %s = %d\n%s", id, code, out.String())
	}
}

// A device with a credential of its own must use it: without AUTH it gets
// 530; with it, its mail is spooled (an app-free, password-free login:
// the device's password is checked against its hash only).
func TestServeDeviceWithCredential(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	hash, err := auth.HashPassword("erp secret")
	if err != nil {
		t.Fatal(err)
	}
	h := startServeWith(t, func(text string) string {
		text = strings.Replace(text, "[[account]]\nusername = \""+demoUser+"\"\n", "[[account]]\nusername = \""+demoUser+"\"\nseal = \"service\"\n", 1)
		return text + "\n[[device]]\nname = \"erp\"\nfrom = [\"127.0.0.1\"]\naccount = \"" + demoUser + "\"\nusername = \"erp\"\npassword_hash = \"" + hash + "\"\n"
	})
	c, err := smtp.Dial(h.d.Addr("smtp").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var se *smtp.SMTPError
	if err := c.Mail("erp@corp.local", nil); !errors.As(err, &se) || se.Code != 530 {
		t.Fatalf("MAIL without AUTH from a device with a credential = %v, want 530", err)
	}
	if err := c.Auth(sasl.NewPlainClient("", "erp", "erp secret")); err != nil {
		t.Fatalf("AUTH as the device = %v", err)
	}
	if err := c.Mail("erp@corp.local", nil); err != nil {
		t.Fatal(err)
	}
	c.Rcpt("bob@example.com", nil)
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("Subject: invoice\r\n\r\nrun 1\r\n"))
	resp, err := w.CloseWithResponse()
	if err != nil || !strings.HasPrefix(resp.StatusText, "2.0.0 Ok: queued as ") {
		t.Fatalf("end of DATA = %+v, %v; want the queue id", resp, err)
	}
}

// A mail client of a seal = "service" account logs in with the account's
// password_hash and sends straight upstream with the service-sealed tokens.
func TestServeServiceSealedClient(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	hash, err := auth.HashPassword("client pw")
	if err != nil {
		t.Fatal(err)
	}
	h := startServeWith(t, func(text string) string {
		stateDir := regexp.MustCompile(`state_dir = "([^"]+)"`).FindStringSubmatch(text)[1]
		st, err := store.Open(filepath.Join(stateDir, "tokens"))
		if err != nil {
			t.Fatal(err)
		}
		entry, _, err := st.Unlock(demoUser, demoPassword)
		if err != nil {
			t.Fatal(err)
		}
		key, err := oauth.LoadServiceKey(stateDir, true)
		if err != nil {
			t.Fatal(err)
		}
		k, _ := st.NewKey(key.Password(demoUser))
		if err := st.Save(demoUser, k, entry); err != nil {
			t.Fatal(err)
		}
		return strings.Replace(text, "[[account]]\nusername = \""+demoUser+"\"\n",
			"[[account]]\nusername = \""+demoUser+"\"\nseal = \"service\"\npassword_hash = \""+hash+"\"\n", 1)
	})
	c, err := smtp.Dial(h.d.Addr("smtp").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", demoUser, "client pw")); err != nil {
		t.Fatalf("AUTH = %v", err)
	}
	if err := c.SendMail(demoUser, []string{"bob@example.com"}, strings.NewReader("Subject: direct\r\n\r\nhi\r\n")); err != nil {
		t.Fatalf("send = %v", err)
	}
	if n := len(h.dm.smtpUp.Messages()); n != 1 {
		t.Errorf("upstream has %d messages, want 1", n)
	}
}
