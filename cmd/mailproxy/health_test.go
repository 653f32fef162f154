package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// With the upstream IMAP and SMTP servers down, the page and /healthz say
// so: no "last upstream login" from an SMTP AUTH that never reached the
// upstream, the upstream errors with their time, and "degraded" (still 200).
func TestDemoHealthWithUpstreamsDown(t *testing.T) {
	dm, err := startDemo(demoOptions{imap: "127.0.0.1:0", smtp: "127.0.0.1:0", admin: "127.0.0.1:0", stateDir: t.TempDir(), logOut: discardWriter{}})
	if err != nil {
		t.Fatalf("startDemo() = %v", err)
	}
	t.Cleanup(func() { dm.close(context.Background()) })
	dm.imapUp.Close()
	dm.smtpUp.Close()

	c, err := imapclient.DialInsecure(dm.d.Addr("imap").String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(demoUser, demoPassword).Wait(); err == nil || !strings.Contains(err.Error(), "cannot reach") {
		t.Errorf("IMAP login with the upstream down = %v, want UNAVAILABLE cannot reach", err)
	}
	sc, err := smtp.Dial(dm.d.Addr("smtp").String())
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if err := sc.Auth(sasl.NewPlainClient("", demoUser, demoPassword)); err != nil {
		t.Fatalf("local SMTP AUTH = %v, want it accepted (the upstream is opened at MAIL)", err)
	}
	var se *smtp.SMTPError
	if err := sc.Mail(demoUser, nil); !errors.As(err, &se) || se.Code != 451 {
		t.Errorf("MAIL with the upstream down = %v, want 451", err)
	}
	if !dm.d.Metrics().LastUpstreamLogin(demoUser).IsZero() {
		t.Errorf("last upstream login is set although no upstream login happened")
	}

	resp, err := http.Get("http://" + dm.d.Addr("admin").String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	var health struct {
		Status  string   `json:"status"`
		Reasons []string `json:"reasons"`
	}
	json.NewDecoder(resp.Body).Decode(&health)
	resp.Body.Close()
	reasons := strings.Join(health.Reasons, "\n")
	if resp.StatusCode != http.StatusOK || health.Status != "degraded" ||
		!strings.Contains(reasons, "imap upstream: the last login of 1 account failed") ||
		!strings.Contains(reasons, "smtp upstream: the last login of 1 account failed") ||
		!strings.Contains(reasons, "1 account needs a sign-in") {
		t.Errorf("GET /healthz = %d %s %q, want 200 degraded with the sign-in and both upstreams", resp.StatusCode, health.Status, health.Reasons)
	}

	jar, _ := cookiejar.New(nil)
	resp, err = (&http.Client{Jar: jar}).Get(dm.d.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	row := string(page)
	if i := strings.Index(row, `id="account-`+demoUser+`"`); i >= 0 {
		row = row[i:]
		row = row[:strings.Index(row, "</tr>")]
	}
	for _, want := range []string{`data-state="error"`, `data-upstream="imap"`, `data-upstream="smtp"`, "cannot reach the mail server", "UTC"} {
		if !strings.Contains(row, want) {
			t.Errorf("the page's row of %s lacks %q:\n%s", demoUser, want, row)
		}
	}
	if strings.Contains(string(page), "`") {
		t.Errorf("the page shows raw backticks")
	}
}
