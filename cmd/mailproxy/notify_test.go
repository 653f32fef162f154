//go:build linux

package main

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listenNotify plays the service manager: a unixgram socket at a fresh path
// (or, with abstract, in the abstract namespace) that NOTIFY_SOCKET names.
func listenNotify(t *testing.T, abstract bool) *net.UnixConn {
	t.Helper()
	var name string
	if abstract {
		b := make([]byte, 8)
		rand.Read(b)
		name = "@mailproxy-test-" + hex.EncodeToString(b)
	} else {
		dir := t.TempDir()
		if len(dir) > 80 { // sun_path holds 108 bytes
			var err error
			if dir, err = os.MkdirTemp("", "sdn"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
		}
		name = filepath.Join(dir, "notify.sock")
	}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatalf("ListenUnixgram(%q) = %v", name, err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", name)
	return c
}

// readNotify returns the next datagram the socket received.
func readNotify(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, _, err := c.ReadFromUnix(buf)
	if err != nil {
		t.Fatalf("reading the notify socket: %v", err)
	}
	return string(buf[:n])
}

func TestNotifyMessages(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		c := listenNotify(t, abstract)
		tests := []struct {
			name string
			send func() error
			want string
		}{
			{"notifyReady(status)", func() error { return notifyReady("serving 3 accounts") }, "READY=1\nSTATUS=serving 3 accounts"},
			{"notifyReady(\"\")", func() error { return notifyReady("") }, "READY=1"},
			{"notifyStopping()", notifyStopping, "STOPPING=1\nSTATUS=shutting down"},
			{"notifyStatus(two lines)", func() error { return notifyStatus("reload refused:\nbad key") }, "STATUS=reload refused: bad key"},
			{"sdNotify(WATCHDOG=1)", func() error { return sdNotify("WATCHDOG=1") }, "WATCHDOG=1"},
		}
		for _, tt := range tests {
			if err := tt.send(); err != nil {
				t.Fatalf("%s with NOTIFY_SOCKET=%q = %v, want nil", tt.name, os.Getenv("NOTIFY_SOCKET"), err)
			}
			if got := readNotify(t, c); got != tt.want {
				t.Errorf("%s with NOTIFY_SOCKET=%q sent %q, want %q", tt.name, os.Getenv("NOTIFY_SOCKET"), got, tt.want)
			}
		}
	}
}

func TestNotifyReloadingCarriesMonotonicClock(t *testing.T) {
	c := listenNotify(t, false)
	before, err := monotonicUsec()
	if err != nil {
		t.Fatal(err)
	}
	if err := notifyReloading(); err != nil {
		t.Fatalf("notifyReloading() = %v, want nil", err)
	}
	after, _ := monotonicUsec()
	got := readNotify(t, c)
	lines := strings.Split(got, "\n")
	if len(lines) != 2 || lines[0] != "RELOADING=1" || !strings.HasPrefix(lines[1], "MONOTONIC_USEC=") {
		t.Fatalf("notifyReloading() sent %q, want \"RELOADING=1\\nMONOTONIC_USEC=<n>\"", got)
	}
	usec, err := strconv.ParseInt(strings.TrimPrefix(lines[1], "MONOTONIC_USEC="), 10, 64)
	if err != nil || usec < before || usec > after {
		t.Errorf("notifyReloading() MONOTONIC_USEC = %q, want a number in [%d, %d]", lines[1], before, after)
	}
}

func TestNotifyUnsetIsNoop(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	for name, f := range map[string]func() error{
		"notifyReady":     func() error { return notifyReady("up") },
		"notifyReloading": notifyReloading,
		"notifyStopping":  notifyStopping,
	} {
		if err := f(); err != nil {
			t.Errorf("%s() without NOTIFY_SOCKET = %v, want nil", name, err)
		}
	}
}

func TestNotifyErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "gone.sock")
	for _, tt := range []struct{ socket, state string }{
		{"vsock:2:1234", "READY=1"},
		{"relative.sock", "READY=1"},
		{missing, "READY=1"},
		{missing, ""},
	} {
		if err := notifySocket(tt.socket, tt.state); err == nil {
			t.Errorf("notifySocket(%q, %q) = nil, want an error", tt.socket, tt.state)
		}
	}
}
