package fake365

import (
	"encoding/base64"
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestCaptureLeaks(t *testing.T) {
	const pw = "correct horse battery staple"
	tok := strings.Repeat("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9", 3) + ".sig-abcdefghijklmnopqrstuvwxyz0123456789"
	for _, tc := range []struct {
		name, text string
		want       []string
	}{
		{"clean", `level=INFO msg="login" user=alice`, nil},
		{"plain", "err=\"bad password " + pw + "\"", []string{"password"}},
		{"base64", "resp=" + base64.StdEncoding.EncodeToString([]byte(pw)), []string{"password"}},
		{"inside PLAIN", "x " + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00"+pw)), []string{"password"}},
		{"inside XOAUTH2", base64.StdEncoding.EncodeToString([]byte("user=a\x01auth=Bearer " + tok + "\x01\x01")), []string{"token"}},
		{"cut short", "token=" + tok[len(tok)-36:], []string{"token"}},
		{"middle", "token=" + tok[20:60] + "...", []string{"token"}},
		{"both", pw + " " + tok, []string{"password", "token"}},
	} {
		c := NewCapture()
		fmt.Fprintln(c, tc.text)
		if got := c.Leaks(map[string]string{"password": pw, "token": tok, "empty": ""}); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: Leaks() = %q, want %q", tc.name, got, tc.want)
		}
	}
	// Tiny secrets do not panic.
	c := NewCapture()
	c.Leaks(map[string]string{"a": "x", "b": "xy", "c": "xyz"})
}

type fakeTB struct {
	failed bool
}

func (f *fakeTB) Helper()               {}
func (f *fakeTB) Errorf(string, ...any) { f.failed = true }

func TestWaitGoroutines(t *testing.T) {
	stop := make(chan struct{})
	for range 5 {
		go func() { <-stop }()
	}
	base := runtime.NumGoroutine() - 5
	var tb fakeTB
	if WaitGoroutines(&tb, base, 50*time.Millisecond) || !tb.failed {
		t.Errorf("WaitGoroutines() with a goroutine left = true, want false and an error")
	}
	close(stop)
	tb = fakeTB{}
	if !WaitGoroutines(&tb, base, 5*time.Second) || tb.failed {
		t.Errorf("WaitGoroutines() after it ended = false, want true")
	}
}
