package upstream

import (
	"testing"
	"time"
)

func TestThrottleDelay(t *testing.T) {
	tests := []struct {
		text      string
		want      time.Duration
		throttled bool
	}{
		{"Request is throttled. Suggested Backoff Time: 299 milliseconds", 299 * time.Millisecond, true},
		{"[UNAVAILABLE] Request is throttled. Suggested Backoff Time: 59997 milliseconds", 59997 * time.Millisecond, true},
		{"request is THROTTLED. suggested backoff time:1500", 1500 * time.Millisecond, true},
		{"Request is throttled.", 0, true},
		{"Request is throttled. Suggested Backoff Time: lots", 0, true},
		{"Request is throttled. Suggested Backoff Time: 99999999999999999999999 milliseconds", 0, true},
		{"Request is throttled. Suggested Backoff Time: 86400000 milliseconds", 15 * time.Minute, true},
		{"AUTHENTICATE failed.", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, throttled := ThrottleDelay(tt.text)
		if got != tt.want || throttled != tt.throttled {
			t.Errorf("ThrottleDelay(%q) = %v, %v, want %v, %v", tt.text, got, throttled, tt.want, tt.throttled)
		}
	}
}

func TestBackoff(t *testing.T) {
	now := time.Date(2025, 6, 1, 9, 0, 0, 0, time.UTC)
	b := NewBackoff()
	b.Now = func() time.Time { return now }
	if d := b.Remaining("alice@x"); d != 0 {
		t.Fatalf("Remaining() before Set = %v, want 0", d)
	}
	b.Set("Alice@X", 30*time.Second)
	b.Set("alice@x", 10*time.Second) // shorter: the longer wait stays
	if d := b.Remaining("alice@x"); d != 30*time.Second {
		t.Errorf("Remaining() = %v, want 30s", d)
	}
	if d := b.Remaining("bob@x"); d != 0 {
		t.Errorf("Remaining(other mailbox) = %v, want 0", d)
	}
	now = now.Add(29 * time.Second)
	if d := b.Remaining("alice@x"); d != time.Second {
		t.Errorf("Remaining() after 29s = %v, want 1s", d)
	}
	now = now.Add(time.Second)
	if d := b.Remaining("alice@x"); d != 0 {
		t.Errorf("Remaining() after 30s = %v, want 0", d)
	}
	b.Set("bob@x", time.Millisecond) // raised to the 1s minimum; prunes alice
	if d := b.Remaining("bob@x"); d != time.Second {
		t.Errorf("Remaining() after Set(1ms) = %v, want 1s", d)
	}
	if n := len(b.until); n != 1 {
		t.Errorf("entries after an expired one = %d, want 1", n)
	}
	var nb *Backoff
	nb.Set("x", time.Minute)
	if d := nb.Remaining("x"); d != 0 {
		t.Errorf("nil Remaining() = %v, want 0", d)
	}
}

func TestThrottledText(t *testing.T) {
	for d, want := range map[time.Duration]string{
		299 * time.Millisecond:   "throttled by Microsoft 365; retry in 1 s",
		60 * time.Second:         "throttled by Microsoft 365; retry in 60 s",
		59001 * time.Millisecond: "throttled by Microsoft 365; retry in 60 s",
	} {
		if got := ThrottledText(d); got != want {
			t.Errorf("ThrottledText(%v) = %q, want %q", d, got, want)
		}
	}
}
