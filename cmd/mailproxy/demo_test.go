package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"mailproxy/internal/cmdline"
	"mailproxy/internal/testutil"
)

// startTestDemo runs the demo in-process on ports the kernel picks.
func startTestDemo(t *testing.T) *demo {
	t.Helper()
	var logs testutil.Buffer
	dm, err := startDemo(demoOptions{imap: "127.0.0.1:0", smtp: "127.0.0.1:0", pop3: "127.0.0.1:0", admin: "", stateDir: t.TempDir(), logOut: &logs})
	if err != nil {
		t.Fatalf("startDemo() = %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		dm.close(ctx)
	})
	return dm
}

func TestDemoReadAndSend(t *testing.T) {
	dm := startTestDemo(t)
	imapAddr := dm.d.Addr("imap").String()

	c, err := imapclient.DialInsecure(imapAddr, nil)
	if err != nil {
		t.Fatalf("DialInsecure(%s) = %v", imapAddr, err)
	}
	defer c.Close()
	if err := c.Login(demoUser, demoPassword).Wait(); err != nil {
		t.Fatalf("Login(%s) = %v", demoUser, err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("Select(INBOX) = %v", err)
	}
	if sel.NumMessages != demoSeedPerUser {
		t.Errorf("INBOX has %d messages, want %d", sel.NumMessages, demoSeedPerUser)
	}

	// Send through the SMTP port; the demo delivers it to the INBOX.
	sc, err := smtp.Dial(dm.d.Addr("smtp").String())
	if err != nil {
		t.Fatalf("smtp.Dial = %v", err)
	}
	defer sc.Close()
	if err := sc.Auth(sasl.NewPlainClient("", demoUser, demoPassword)); err != nil {
		t.Fatalf("Auth(PLAIN) = %v", err)
	}
	body := "Subject: round trip\r\n\r\nsent through the demo\r\n"
	if err := sc.SendMail(demoUser, []string{demoUser}, strings.NewReader(body)); err != nil {
		t.Fatalf("SendMail = %v", err)
	}
	if err := sc.Quit(); err != nil {
		t.Fatalf("Quit = %v", err)
	}

	msgs, err := c.Fetch(imap.UIDSetNum(imap.UID(demoSeedPerUser+1)), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{}}}).Collect()
	if err != nil {
		t.Fatalf("Fetch(UID %d) = %v", demoSeedPerUser+1, err)
	}
	if len(msgs) != 1 {
		t.Fatalf("Fetch(UID %d) returned %d messages, want 1", demoSeedPerUser+1, len(msgs))
	}
	var got []byte
	for _, b := range msgs[0].BodySection {
		got = b.Bytes
	}
	if string(got) != body {
		t.Errorf("fetched message = %q, want %q", got, body)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Errorf("Logout = %v", err)
	}
}

func TestDemoPendingAccountNeedsSignIn(t *testing.T) {
	dm := startTestDemo(t)
	c, err := imapclient.DialInsecure(dm.d.Addr("imap").String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Login(demoPending, "anything").Wait()
	if err == nil || !strings.Contains(err.Error(), cmdline.Login(demoPending)) {
		t.Errorf("Login(%s) = %v, want a refusal naming `mailproxy login`", demoPending, err)
	}
}

func TestDemoWrongPassword(t *testing.T) {
	dm := startTestDemo(t)
	conn, err := net.Dial("tcp", dm.d.Addr("imap").String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "a LOGIN "+demoUser+" wrong\r\nb LOGOUT\r\n")
	all, _ := io.ReadAll(conn)
	if !strings.Contains(string(all), "a NO [AUTHENTICATIONFAILED]") {
		t.Errorf("reply to a wrong password = %q, want a NO [AUTHENTICATIONFAILED]", all)
	}
	if n := dm.imapUp.Logins(); n != 0 {
		t.Errorf("upstream logins after a wrong password = %d, want 0", n)
	}
}

func TestDemoAdminPage(t *testing.T) {
	dm, err := startDemo(demoOptions{imap: "127.0.0.1:0", smtp: "127.0.0.1:0", admin: "127.0.0.1:0", stateDir: t.TempDir(), logOut: discardWriter{}})
	if err != nil {
		t.Fatalf("startDemo() = %v", err)
	}
	t.Cleanup(func() { dm.close(context.Background()) })
	base := "http://" + dm.d.Addr("admin").String()
	// Without the access token the page shows nothing.
	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET / without the token = %d, want 401", resp.StatusCode)
	}
	// The banner's link opens it.
	var banner strings.Builder
	printDemoBanner(&banner, dm)
	link := dm.d.AdminURL()
	if !strings.Contains(link, "?token=") || !strings.Contains(banner.String(), link) {
		t.Fatalf("banner %q does not hold the admin link with its token %q", banner.String(), link)
	}
	jar, _ := cookiejar.New(nil)
	resp, err = (&http.Client{Jar: jar}).Get(link)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || strings.Contains(resp.Request.URL.String(), "token") {
		t.Fatalf("GET %s = %d at %s, want 200 without the token in the address", link, resp.StatusCode, resp.Request.URL)
	}
	for _, want := range []string{demoUser, demoPending, "signed in", "needs sign-in"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("admin page lacks %q", want)
		}
	}
	resp, err = http.Get(base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /healthz = %d, want 200", resp.StatusCode)
	}
}

func TestDemoPortTaken(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // where the demo makes its directory
	for _, flag := range []string{"-imap", "-smtp", "-admin"} {
		taken, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		args := map[string]string{"-imap": "127.0.0.1:0", "-smtp": "127.0.0.1:0", "-admin": "127.0.0.1:0"}
		args[flag] = taken.Addr().String()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		code, stdout, stderr := runDocCommand(ctx, []string{"demo", "-imap", args["-imap"], "-smtp", args["-smtp"], "-admin", args["-admin"]}, "")
		cancel()
		taken.Close()
		if code != exitFailure {
			t.Errorf("demo with %s on a taken port: exit %d, want %d; stderr %q", flag, code, exitFailure, stderr)
		}
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if len(lines) != 1 || !strings.Contains(stderr, taken.Addr().String()) || !strings.Contains(stderr, flag+" ") || !strings.Contains(stderr, "in use") {
			t.Errorf("demo with %s on a taken port: stderr = %q, want one line naming %s, the flag and \"in use\"", flag, stderr, taken.Addr())
		}
		if stdout != "" {
			t.Errorf("demo with %s on a taken port printed %q, want no banner", flag, stdout)
		}
		if left, _ := os.ReadDir(tmp); len(left) != 0 {
			t.Errorf("demo with %s on a taken port left %v in the temporary directory", flag, left)
		}
	}
}

func TestDemoBanner(t *testing.T) {
	dm, err := startDemo(demoOptions{imap: "127.0.0.1:0", smtp: "127.0.0.1:0", admin: "127.0.0.1:0", stateDir: t.TempDir()})
	if err != nil {
		t.Fatalf("startDemo() = %v", err)
	}
	t.Cleanup(func() { dm.close(context.Background()) })
	var b bytes.Buffer
	printDemoBanner(&b, dm)
	banner := b.String()
	// The heading comes first, then the addresses; the config and the log
	// file are named; the log goes to the file, not under the banner.
	if i, j := strings.Index(banner, "mailproxy demo is running"), strings.Index(banner, "admin    http://localhost:"); i < 0 || j < i {
		t.Errorf("banner = %q, want the heading before the admin page line", banner)
	}
	for _, want := range []string{"config   " + dm.cfgFile, "log      " + dm.logFile, "UID=*"} {
		if !strings.Contains(banner, want) {
			t.Errorf("banner lacks %q:\n%s", want, banner)
		}
	}
	if strings.Contains(banner, "UID=4") {
		t.Errorf("banner hard-codes UID=4:\n%s", banner)
	}
	log, err := os.ReadFile(dm.logFile)
	if err != nil || !strings.Contains(string(log), "listening") {
		t.Errorf("demo log file = %q, %v; want the daemon's start lines", log, err)
	}
}

// An account with send_via = "graph" sends through the demo's fake Graph:
// the SMTP client's envelope decides who gets it (a Bcc-only recipient
// included), and the message arrives over IMAP.
func TestDemoSendsThroughGraph(t *testing.T) {
	dm := startTestDemo(t)
	sc, err := smtp.Dial(dm.d.Addr("smtp").String())
	if err != nil {
		t.Fatalf("smtp.Dial = %v", err)
	}
	defer sc.Close()
	if err := sc.Auth(sasl.NewPlainClient("", demoGraphUser, demoPassword)); err != nil {
		t.Fatalf("Auth(PLAIN %s) = %v", demoGraphUser, err)
	}
	body := "From: <" + demoGraphUser + ">\r\nTo: <bob@fabrikam.com>\r\nSubject: via graph\r\n\r\nsent through Microsoft Graph\r\n"
	if err := sc.SendMail(demoGraphUser, []string{"bob@fabrikam.com", demoUser}, strings.NewReader(body)); err != nil {
		t.Fatalf("SendMail through Graph = %v", err)
	}
	sc.Quit()
	sent := dm.graph.Sent()
	if len(sent) != 1 {
		t.Fatalf("the fake Graph sent %d messages, want 1", len(sent))
	}
	if s := sent[0]; !slices.Equal(s.To, []string{"bob@fabrikam.com"}) || !slices.Equal(s.Bcc, []string{demoUser}) {
		t.Errorf("Graph recipients To %v Bcc %v; want To bob, Bcc %s", s.To, s.Bcc, demoUser)
	}
	if n := len(dm.smtpUp.Messages()); n != 0 {
		t.Errorf("the SMTP upstream got %d messages from a Graph account", n)
	}

	c, err := imapclient.DialInsecure(dm.d.Addr("imap").String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(demoUser, demoPassword).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(imap.UIDSetNum(imap.UID(demoSeedPerUser+1)), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{}}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("Fetch(UID %d) = %d messages, %v; want the message sent through Graph", demoSeedPerUser+1, len(msgs), err)
	}
	for _, b := range msgs[0].BodySection {
		if !strings.Contains(string(b.Bytes), "sent through Microsoft Graph") || strings.Contains(string(b.Bytes), "Bcc:") {
			t.Errorf("fetched message = %q, want the Graph message without a Bcc header", b.Bytes)
		}
	}
}
