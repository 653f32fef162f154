//go:build !windows

package main

import (
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"mailproxy/internal/fake365"
	"mailproxy/oauth"
	"mailproxy/oauth/store"
)

// serve with a [[device]] on a service-sealed account that sends through
// Graph: the spool delivers the device's message through the (fake) Graph,
// to exactly the envelope's recipients, and nothing reaches SMTP.
func TestServeDeviceRelayThroughGraph(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	h := startServeWith(t, func(text string) string {
		stateDir := regexp.MustCompile(`state_dir = "([^"]+)"`).FindStringSubmatch(text)[1]
		st, err := store.Open(filepath.Join(stateDir, "tokens"))
		if err != nil {
			t.Fatal(err)
		}
		entry, _, err := st.Unlock(demoGraphUser, demoPassword)
		if err != nil {
			t.Fatal(err)
		}
		key, err := oauth.LoadServiceKey(stateDir, true)
		if err != nil {
			t.Fatal(err)
		}
		k, err := st.NewKey(key.Password(demoGraphUser))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Save(demoGraphUser, k, entry); err != nil {
			t.Fatal(err)
		}
		account := "[[account]]\nusername = \"" + demoGraphUser + "\"\n"
		if !strings.Contains(text, account) {
			t.Fatalf("the demo config has no %s account:\n%s", demoGraphUser, text)
		}
		text = strings.Replace(text, account, account+"seal = \"service\"\n", 1)
		return text + "\n[[device]]\nname = \"mfp\"\nfrom = [\"127.0.0.1\"]\naccount = \"" + demoGraphUser + "\"\n"
	})
	got := make(chan *fake365.GraphSent, 4)
	h.dm.graph.SetDeliver(func(s *fake365.GraphSent) { got <- s })

	c, err := smtp.Dial(h.d.Addr("smtp").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Mail("scanner@printer.local", nil); err != nil {
		t.Fatalf("MAIL without AUTH from the device = %v", err)
	}
	for _, r := range []string{"bob@example.com", "archive@contoso.com"} {
		if err := c.Rcpt(r, nil); err != nil {
			t.Fatal(err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("From: <" + demoGraphUser + ">\r\nTo: <bob@example.com>\r\nSubject: scan\r\n\r\npage 1\r\n"))
	if resp, err := w.CloseWithResponse(); err != nil || !strings.HasPrefix(resp.StatusText, "2.0.0 Ok: queued as ") {
		t.Fatalf("end of DATA = %+v, %v; want 250 with the queue id", resp, err)
	}
	select {
	case s := <-got:
		if !slices.Equal(s.To, []string{"bob@example.com"}) || !slices.Equal(s.Bcc, []string{"archive@contoso.com"}) || !strings.Contains(string(s.MIME), "page 1") {
			t.Errorf("Graph sent To %v Bcc %v:\n%s", s.To, s.Bcc, s.MIME)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the spool did not deliver through Graph; serve log:\n%s", h.logs.String())
	}
	if n := len(h.dm.smtpUp.Messages()); n != 0 {
		t.Errorf("the SMTP upstream got %d messages for an account that sends through Graph", n)
	}
}
