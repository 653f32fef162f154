//go:build !windows

package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"mailproxy/daemon"
	"mailproxy/internal/testutil"
	"mailproxy/oauth"
	"mailproxy/oauth/store"
)

// serveHarness runs `mailproxy serve` in-process against the demo's fakes.
type serveHarness struct {
	dm      *demo
	cfgFile string
	cfgText string
	d       *daemon.Daemon
	reloads chan error
	// reloadReq asks for a reload as the Windows service manager does.
	reloadReq chan struct{}
	cancel    context.CancelFunc
	done      chan error
	logs      *testutil.Buffer
}

func startServe(t *testing.T) *serveHarness {
	t.Helper()
	return startServeWith(t, nil)
}

// startServeWith is startServe with the demo's config text changed by edit
// before serve reads it.
func startServeWith(t *testing.T, edit func(string) string) *serveHarness {
	t.Helper()
	dir := t.TempDir()
	dm, err := startDemo(demoOptions{imap: "127.0.0.1:0", smtp: "127.0.0.1:0", admin: "", stateDir: dir, logOut: discardWriter{}})
	if err != nil {
		t.Fatalf("startDemo() = %v", err)
	}
	// The demo's own daemon steps aside; serve takes over its config and
	// state with the same fakes behind it.
	dm.d.Shutdown(context.Background())
	dm.d = nil
	t.Cleanup(func() { dm.close(context.Background()) })

	h := &serveHarness{dm: dm, cfgFile: filepath.Join(dir, "mailproxy.toml"), reloads: make(chan error, 1), reloadReq: make(chan struct{}), done: make(chan error, 1), logs: new(testutil.Buffer)}
	b, err := os.ReadFile(h.cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	h.cfgText = string(b)
	if edit != nil {
		h.cfgText = edit(h.cfgText)
		if err := os.WriteFile(h.cfgFile, []byte(h.cfgText), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ready := make(chan *daemon.Daemon, 1)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	env := &cmdEnv{
		stdin:      strings.NewReader(""),
		stdout:     new(testutil.Buffer),
		stderr:     h.logs,
		getenv:     func(string) string { return "" },
		serving:    func(d *daemon.Daemon) { ready <- d },
		reloadDone: func(err error) { h.reloads <- err },
		reload:     h.reloadReq,
	}
	go func() {
		code := run(ctx, env, []string{"serve", "-config", h.cfgFile})
		if code != exitOK {
			h.done <- fmt.Errorf("serve exited with status %d", code)
			return
		}
		h.done <- nil
	}()
	select {
	case h.d = <-ready:
	case err := <-h.done:
		t.Fatalf("serve ended before it was ready: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		<-h.done
	})
	return h
}

// reload rewrites the config file and sends SIGHUP to this process.
func (h *serveHarness) reload(t *testing.T, text string) error {
	t.Helper()
	if err := os.WriteFile(h.cfgFile, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-h.reloads:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("no reload within 10s of SIGHUP")
		return nil
	}
}

func imapLogin(t *testing.T, addr, user, pass string) (*imapclient.Client, error) {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		return nil, err
	}
	if err := c.Login(user, pass).Wait(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// freeAddr returns a loopback address with a port the kernel just handed
// out and released.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestServeReload(t *testing.T) {
	h := startServe(t)
	oldAddr := h.d.Addr("imap").String()

	live, err := imapLogin(t, oldAddr, demoUser, demoPassword)
	if err != nil {
		t.Fatalf("login before reload = %v", err)
	}
	defer live.Close()
	if _, err := live.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("Select before reload = %v", err)
	}

	// A new account, signed in while serve runs; the pending account is
	// removed; IMAP moves to another port.
	const newUser, newPassword = "new@contoso.com", "new-secret"
	st, err := store.Open(filepath.Join(h.d.Store().Dir()))
	if err != nil {
		t.Fatal(err)
	}
	m := oauth.NewManager(st, discardLogger())
	p := h.d.Config().Accounts[0].Provider
	h.dm.imapUp.AddMailbox(newUser)
	rt := h.dm.idp.GrantRefreshToken(demoClientID, newUser, p.Scopes)
	if err := m.Seal(newUser, newPassword, oauth.TokenSet{RefreshToken: rt, Scopes: p.Scopes}, store.Meta{Identity: newUser}); err != nil {
		t.Fatal(err)
	}
	newAddr := freeAddr(t)
	text := strings.Replace(h.cfgText, `listen = "127.0.0.1:0"`, `listen = "`+newAddr+`"`, 1)
	text = strings.Replace(text, `username = "`+demoPending+`"`, `username = "`+newUser+`"`, 1)
	if err := h.reload(t, text); err != nil {
		t.Fatalf("reload = %v", err)
	}

	if got := h.d.Addr("imap").String(); got != newAddr {
		t.Errorf("imap address after reload = %s, want %s", got, newAddr)
	}
	if err := live.Noop().Wait(); err != nil {
		t.Errorf("live session after reload: NOOP = %v", err)
	}
	c, err := imapLogin(t, newAddr, newUser, newPassword)
	if err != nil {
		t.Fatalf("login of the new account after reload = %v", err)
	}
	c.Close()
	if _, err := imapLogin(t, newAddr, demoPending, "anything"); err == nil || !strings.Contains(err.Error(), "AUTHENTICATIONFAILED") {
		t.Errorf("login of the removed account = %v, want AUTHENTICATIONFAILED", err)
	}
	if conn, err := net.Dial("tcp", oldAddr); err == nil {
		conn.Close()
		t.Errorf("old address %s still accepts connections after the reload", oldAddr)
	}

	// A broken config is refused and the running one kept.
	if err := h.reload(t, text+"\nbogus_key = 1\n"); err == nil || !strings.Contains(err.Error(), "bogus_key") {
		t.Errorf("reload of a bad config = %v, want an error naming bogus_key", err)
	}
	c, err = imapLogin(t, newAddr, newUser, newPassword)
	if err != nil {
		t.Fatalf("login after a refused reload = %v", err)
	}
	c.Close()
}

func TestServeShutdownFinishesSMTPTransaction(t *testing.T) {
	h := startServe(t)
	sc, err := smtp.Dial(h.d.Addr("smtp").String())
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if err := sc.Auth(sasl.NewPlainClient("", demoUser, demoPassword)); err != nil {
		t.Fatalf("Auth = %v", err)
	}
	if err := sc.Mail(demoUser, nil); err != nil {
		t.Fatalf("Mail = %v", err)
	}
	if err := sc.Rcpt(demoUser, nil); err != nil {
		t.Fatalf("Rcpt = %v", err)
	}
	w, err := sc.Data()
	if err != nil {
		t.Fatalf("Data = %v", err)
	}
	if _, err := w.Write([]byte("Subject: in flight\r\n\r\nfirst half\r\n")); err != nil {
		t.Fatal(err)
	}

	h.cancel() // SIGTERM
	deadline := time.Now().Add(10 * time.Second)
	for h.d.Addr("smtp") != nil {
		if time.Now().After(deadline) {
			t.Fatal("serve did not stop listening within 10s of shutdown")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := w.Write([]byte("second half\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("end of DATA during shutdown = %v, want 250", err)
	}
	if err := <-h.done; err != nil {
		t.Errorf("serve = %v, want a clean exit", err)
	}
	h.done <- nil // for the cleanup
	msgs := h.dm.smtpUp.Messages()
	if len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), "second half") {
		t.Errorf("upstream got %d messages, want the whole in-flight one", len(msgs))
	}
}

func TestServeAdminRebind(t *testing.T) {
	h := startServeWith(t, func(s string) string {
		return strings.Replace(s, "[admin]\nlisten = \"\"", "[admin]\nlisten = \"127.0.0.1:0\"", 1)
	})
	oldAddr := h.d.Addr("admin")
	if oldAddr == nil {
		t.Fatal("admin page not listening")
	}
	newAddr := freeAddr(t)
	text := strings.Replace(h.cfgText, "[admin]\nlisten = \"127.0.0.1:0\"", "[admin]\nlisten = \""+newAddr+"\"", 1)
	if err := h.reload(t, text); err != nil {
		t.Fatalf("reload = %v", err)
	}
	resp, err := http.Get("http://" + newAddr + "/healthz")
	if err != nil {
		t.Fatalf("GET /healthz on the new admin address = %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /healthz on the new admin address = %d, want 200", resp.StatusCode)
	}
	if c, err := net.Dial("tcp", oldAddr.String()); err == nil {
		c.Close()
		t.Errorf("old admin address %s still accepts connections after the reload", oldAddr)
	}
}

func TestServeLogsStart(t *testing.T) {
	h := startServe(t)
	logs := h.logs.String()
	ver, _ := buildVersion()
	for _, want := range []string{
		`msg="mailproxy started"`, "version=" + ver, "config=" + h.cfgFile, "accounts=3",
		"imap=" + h.d.Addr("imap").String(), "smtp=" + h.d.Addr("smtp").String(),
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("serve's log lacks %q:\n%s", want, logs)
		}
	}
}
