package admin

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// The recent upstream errors of an account are bounded, newest first, per
// account.
func TestRecentUpstreamErrorsRing(t *testing.T) {
	m := NewMetrics("imap", "smtp")
	for i := range RecentErrors + 3 {
		m.UpstreamResult("Alice@x", "imap", fmt.Errorf("failure %d", i))
		m.UpstreamResult("alice@x", "smtp", nil)
	}
	got := m.RecentUpstreamErrors("alice@X")
	if len(got) != RecentErrors {
		t.Fatalf("RecentUpstreamErrors() has %d, want %d", len(got), RecentErrors)
	}
	if got[0].Text != fmt.Sprintf("failure %d", RecentErrors+2) || got[RecentErrors-1].Text != "failure 3" || got[0].Proto != "imap" {
		t.Errorf("RecentUpstreamErrors() = %+v, want failures %d down to 3", got, RecentErrors+2)
	}
	if got[0].At.Before(got[1].At) {
		t.Errorf("RecentUpstreamErrors() is not newest first: %v before %v", got[0].At, got[1].At)
	}
	if n := len(m.RecentUpstreamErrors("bob@x")); n != 0 {
		t.Errorf("bob has %d recent errors, want none", n)
	}
	// A success is not an error; the generation moves with every result.
	g := m.HealthGeneration()
	m.UpstreamResult("alice@x", "smtp", nil)
	if len(m.RecentUpstreamErrors("alice@x")) != RecentErrors || m.HealthGeneration() == g {
		t.Errorf("after a success: %d recent errors, generation %d (was %d)", len(m.RecentUpstreamErrors("alice@x")), m.HealthGeneration(), g)
	}
}

// An upstream error that carries something like a token keeps its words
// and loses the token, on every view.
func TestUpstreamErrorsHoldNoSecrets(t *testing.T) {
	const token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL291dGxvb2sub2ZmaWNlLmNvbSJ9.c2lnbmF0dXJl"
	const xoauth = "dXNlcj1hbGljZUB4AWF1dGg9QmVhcmVyIHlhMjkuQTBBUnJkYU0BAQ=="
	m := NewMetrics("imap")
	m.UpstreamResult("alice@x", "imap", errors.New("upstream refused \""+token+"\" after AUTHENTICATE XOAUTH2 "+xoauth+" at outlook.office365.com:993"))
	for _, text := range []string{m.Upstreams("alice@x")[0].LastError, m.RecentUpstreamErrors("alice@x")[0].Text} {
		if strings.Contains(text, "eyJ0eXAi") || strings.Contains(text, "dXNlcj1h") {
			t.Errorf("stored upstream error %q holds a credential", text)
		}
		if !strings.Contains(text, "upstream refused") || !strings.Contains(text, "outlook.office365.com:993") || !strings.Contains(text, "<redacted>") {
			t.Errorf("stored upstream error %q lost its words", text)
		}
	}
}
