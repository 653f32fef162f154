package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"mailproxy/internal/testutil"
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

	// The account page lists the recent upstream errors.
	au, _ := url.Parse(dm.d.AdminURL())
	resp, err = (&http.Client{Jar: jar}).Get(au.Scheme + "://" + au.Host + "/account?name=" + demoUser)
	if err != nil {
		t.Fatal(err)
	}
	page, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if recent := string(page); !strings.Contains(recent, "Recent upstream errors") || strings.Count(recent, `class="recent-error"`) != 2 ||
		!strings.Contains(recent, "cannot reach the mail server") {
		t.Errorf("the account page does not list the two recent upstream errors:\n%s", recent)
	}

	// status: while serve runs it says so; after it stopped it shows what
	// serve last knew, errors included.
	code, out := statusOf(t, dm.cfgFile)
	if code != exitOK || !strings.Contains(out, "Upstream health, from the running mailproxy serve (pid ") {
		t.Errorf("status while the demo runs = exit %d:\n%s", code, out)
	}
	dm.d.Shutdown(context.Background())
	code, out = statusOf(t, dm.cfgFile)
	if code != exitOK {
		t.Fatalf("status after the demo stopped = exit %d:\n%s", code, out)
	}
	wantInOutput(t, "status after the demo stopped", out,
		"Upstream health, as mailproxy serve (pid ", "when it stopped at",
		"Recent upstream errors of "+demoUser+" (newest first):")
	for _, proto := range []string{"imap", "smtp"} {
		line := ""
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) > 2 && f[0] == "!" && f[1] == demoUser && f[2] == proto {
				line = l
			}
		}
		if !strings.Contains(line, "connection refused") || !strings.Contains(line, "UTC") {
			t.Errorf("status lacks a ! line with the %s upstream's error of %s:\n%s", proto, demoUser, out)
		}
	}
}

// statusOf runs `mailproxy status -config cfgFile`.
func statusOf(t *testing.T, cfgFile string) (int, string) {
	t.Helper()
	var out, errb testutil.Buffer
	env := &cmdEnv{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	code := run(t.Context(), env, []string{"status", "-config", cfgFile})
	return code, out.String() + errb.String()
}

// The account page shows the account's details and sends a test message
// through the real upstream path, showing the upstream's reply.
func TestDemoAccountPageSendsTestMessage(t *testing.T) {
	dm, err := startDemo(demoOptions{imap: "127.0.0.1:0", smtp: "127.0.0.1:0", admin: "127.0.0.1:0", stateDir: t.TempDir(), logOut: discardWriter{}})
	if err != nil {
		t.Fatalf("startDemo() = %v", err)
	}
	t.Cleanup(func() { dm.close(context.Background()) })
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar}
	get := func(u string) string {
		t.Helper()
		resp, err := hc.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s = %d:\n%s", u, resp.StatusCode, b)
		}
		return string(b)
	}
	get(dm.d.AdminURL())
	au, _ := url.Parse(dm.d.AdminURL())
	base := au.Scheme + "://" + au.Host // the host the session cookie is for
	page := get(base + "/account?name=" + demoUser)
	for _, want := range []string{"<h2>" + demoUser + "</h2>", "Refresh token age", "Blocked logins", "Send a test message", `name="password"`} {
		if !strings.Contains(page, want) {
			t.Errorf("account page lacks %q", want)
		}
	}
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
	if csrf == nil {
		t.Fatalf("account page has no CSRF field:\n%s", page)
	}
	post := func(password string) string {
		t.Helper()
		form := url.Values{"csrf": {csrf[1]}, "account": {demoUser}, "to": {demoPending}, "password": {password}}
		req, _ := http.NewRequest(http.MethodPost, base+"/account/test", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", base) // what a browser sends from the page
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if got := post("wrong"); !strings.Contains(got, "was not sent") || len(dm.smtpUp.Messages()) != 0 {
		t.Errorf("test message with a wrong password: page %q, %d messages upstream; want not sent", got, len(dm.smtpUp.Messages()))
	}
	got := post(demoPassword)
	msgs := dm.smtpUp.Messages()
	if len(msgs) != 1 || msgs[0].From != demoUser || msgs[0].Rcpts[0].Addr != demoPending || !strings.Contains(string(msgs[0].Data), "Subject: mailproxy test message") {
		t.Fatalf("upstream got %+v, want the test message from %s to %s", msgs, demoUser, demoPending)
	}
	if !strings.Contains(got, "The upstream server answered:") || !strings.Contains(got, msgs[0].QueueID) {
		t.Errorf("page after the test message lacks the upstream's reply with %s:\n%s", msgs[0].QueueID, got)
	}
}
