package admin

import (
	"net/http"
	"regexp"
	"slices"
	"testing"
)

func TestIndexProtocols(t *testing.T) {
	e := newEnv(t)
	m := e.metrics
	m.ConnOpened("pop3")
	m.ConnOpened("pop3")
	m.ConnClosed("pop3")
	m.Login("pop3", true)
	m.Login("pop3", false)
	m.Login("pop3", false)
	m.UpstreamAuthFailed("pop3")
	m.Login("imap", true)

	r := e.browser().get("/")
	if r.code != http.StatusOK {
		t.Fatalf("GET / = %d, want 200", r.code)
	}
	cells := func(proto string) []string {
		row := regexp.MustCompile(`<tr id="proto-` + proto + `">(.*?)</tr>`).FindStringSubmatch(r.body)
		if row == nil {
			t.Fatalf("index has no row for %s:\n%s", proto, r.body)
		}
		var out []string
		for _, c := range regexp.MustCompile(`<div>([^<]*)</div>`).FindAllStringSubmatch(row[1], -1) {
			out = append(out, c[1])
		}
		return out
	}
	// name, open, since start, logins, refused, refused upstream
	if got, want := cells("pop3"), []string{"pop3", "1", "2", "1", "2", "1"}; !slices.Equal(got, want) {
		t.Errorf("pop3 row = %q, want %q", got, want)
	}
	if got, want := cells("imap"), []string{"imap", "0", "0", "1", "0", "0"}; !slices.Equal(got, want) {
		t.Errorf("imap row = %q, want %q", got, want)
	}
}
