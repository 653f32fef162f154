package admin

import (
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// Active blocks show on the index (an alert) and on /lockout, whose button
// clears one.
func TestLockoutPage(t *testing.T) {
	var mu sync.Mutex
	blocks := []LoginBlock{{User: "printer@example.com", Addr: "127.0.0.1", Until: time.Now().Add(10 * time.Minute)}}
	var cleared []string
	e := newEnv(t, func(_ *env, o *Options) {
		o.Blocks = func() []LoginBlock { mu.Lock(); defer mu.Unlock(); return append([]LoginBlock(nil), blocks...) }
		o.ClearBlock = func(user, addr string) bool {
			mu.Lock()
			defer mu.Unlock()
			cleared = append(cleared, user+" "+addr)
			ok := len(blocks) > 0
			blocks = nil
			return ok
		}
	})
	b := e.browser()
	if body := b.get("/").body; !strings.Contains(body, "Logins of printer@example.com from 127.0.0.1 are blocked") {
		t.Errorf("index has no alert about the block:\n%s", body)
	}
	r := b.get("/lockout")
	if r.code != http.StatusOK || !strings.Contains(r.body, "printer@example.com") || !strings.Contains(r.body, `action="/lockout/clear"`) {
		t.Fatalf("GET /lockout = %d, want the block with a clear button:\n%s", r.code, r.body)
	}
	csrf := field(t, csrfRE, r.body)
	r = b.post("/lockout/clear", url.Values{"csrf": {csrf}, "user": {"printer@example.com"}, "addr": {"127.0.0.1"}})
	if r.code != http.StatusSeeOther {
		t.Fatalf("POST /lockout/clear = %d, want 303", r.code)
	}
	if len(cleared) != 1 || cleared[0] != "printer@example.com 127.0.0.1" {
		t.Errorf("ClearBlock calls = %q", cleared)
	}
	if body := b.get("/lockout").body; !strings.Contains(body, "are allowed again") || !strings.Contains(body, "No login is blocked") {
		t.Errorf("after clearing, /lockout does not say so:\n%s", body)
	}
	// Without the CSRF token nothing is cleared.
	if r := b.post("/lockout/clear", url.Values{"user": {"x"}, "addr": {"127.0.0.1"}}); r.code != http.StatusForbidden {
		t.Errorf("POST /lockout/clear without CSRF = %d, want 403", r.code)
	}
}
