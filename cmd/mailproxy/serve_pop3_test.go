//go:build !windows

package main

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"
)

// pop3Login logs in with USER/PASS and returns the connection and its
// reader, or the first refusal.
func pop3Login(t *testing.T, addr, user, pass string) (net.Conn, *bufio.Reader, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, nil, err.Error()
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	for _, cmd := range []string{"", "USER " + user, "PASS " + pass} {
		if cmd != "" {
			c.Write([]byte(cmd + "\r\n"))
		}
		l, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(l, "+OK") {
			c.Close()
			return nil, nil, strings.TrimSpace(l) + errText(err)
		}
	}
	return c, r, ""
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return " (" + err.Error() + ")"
}

func pop3Cmd(t *testing.T, c net.Conn, r *bufio.Reader, cmd string) string {
	t.Helper()
	c.Write([]byte(cmd + "\r\n"))
	l, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return strings.TrimRight(l, "\r\n")
}

// TestServePOP3Reload: serve runs the POP3 front from [pop3]; a reload
// moves it to another port without dropping a relayed session, and one
// that sets listen = "" stops it.
func TestServePOP3Reload(t *testing.T) {
	h := startServeWith(t, func(s string) string {
		return strings.Replace(s, "[pop3]\nlisten = \"\"", "[pop3]\nlisten = \"127.0.0.1:0\"", 1)
	})
	a := h.d.Addr("pop3")
	if a == nil {
		t.Fatalf("serve has no pop3 listener; config:\n%s", h.cfgText)
	}
	oldAddr := a.String()
	live, lr, refusal := pop3Login(t, oldAddr, demoUser, demoPassword)
	if live == nil {
		t.Fatalf("POP3 login = %s, want +OK", refusal)
	}
	if got := pop3Cmd(t, live, lr, "STAT"); !strings.HasPrefix(got, "+OK 3 ") {
		t.Errorf("STAT = %q, want the demo's 3 messages", got)
	}

	newAddr := freeAddr(t)
	on := "[pop3]\nlisten = \"127.0.0.1:0\""
	text := strings.Replace(h.cfgText, on, "[pop3]\nlisten = \""+newAddr+"\"", 1)
	if err := h.reload(t, text); err != nil {
		t.Fatalf("reload = %v", err)
	}
	if got := h.d.Addr("pop3"); got == nil || got.String() != newAddr {
		t.Errorf("pop3 address after reload = %v, want %s", got, newAddr)
	}
	if got := pop3Cmd(t, live, lr, "NOOP"); !strings.HasPrefix(got, "+OK") {
		t.Errorf("live session after reload: NOOP = %q, want +OK", got)
	}
	if c, _, refusal := pop3Login(t, newAddr, demoUser, demoPassword); c == nil {
		t.Errorf("POP3 login on the new address = %s, want +OK", refusal)
	}
	if conn, err := net.Dial("tcp", oldAddr); err == nil {
		conn.Close()
		t.Errorf("old POP3 address %s still accepts connections after the reload", oldAddr)
	}
	if c, _, refusal := pop3Login(t, newAddr, demoPending, "anything"); c != nil || !strings.HasPrefix(refusal, "-ERR [") {
		t.Errorf("POP3 login of the pending account = %q, want -ERR with a response code", refusal)
	}

	off := strings.Replace(h.cfgText, on, "[pop3]\nlisten = \"\"", 1)
	if err := h.reload(t, off); err != nil {
		t.Fatalf("reload with POP3 off = %v", err)
	}
	if got := h.d.Addr("pop3"); got != nil {
		t.Errorf("pop3 listener after listen = \"\" = %v, want none", got)
	}
	pop3Cmd(t, live, lr, "QUIT")
}
