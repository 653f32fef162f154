package upstream

import (
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	// DefaultThrottleBackoff is how long new logins of a mailbox wait after
	// the upstream throttled it without saying for how long.
	DefaultThrottleBackoff = 60 * time.Second
	// maxThrottleBackoff caps a suggested backoff: a garbled number must not
	// lock a mailbox out for days.
	maxThrottleBackoff = 15 * time.Minute
	minThrottleBackoff = time.Second
)

// Backoff remembers, per mailbox (matched case-insensitively), until when
// new upstream logins must wait because the upstream throttled the mailbox.
// Meanwhile the fronts refuse those logins with a temporary error, without
// contacting the upstream: Exchange counts every attempt, so retrying at
// once only prolongs the throttling. A nil *Backoff never backs off. It is
// safe for concurrent use.
type Backoff struct {
	// Now is the clock; nil means time.Now. Set it before first use.
	Now func() time.Time

	mu    sync.Mutex // protects until
	until map[string]time.Time
}

// NewBackoff returns an empty Backoff.
func NewBackoff() *Backoff { return &Backoff{until: make(map[string]time.Time)} }

func (b *Backoff) now() time.Time {
	if b.Now != nil {
		return b.Now()
	}
	return time.Now()
}

// Set makes new logins of mailbox wait d (bounded to between one second
// and 15 minutes) from now, unless a longer wait is already running.
func (b *Backoff) Set(mailbox string, d time.Duration) {
	if b == nil {
		return
	}
	d = min(max(d, minThrottleBackoff), maxThrottleBackoff)
	key := strings.ToLower(mailbox)
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	for k, t := range b.until {
		if !now.Before(t) {
			delete(b.until, k)
		}
	}
	if t := now.Add(d); t.After(b.until[key]) {
		b.until[key] = t
	}
}

// Remaining returns how long new logins of mailbox must still wait; 0 when
// they need not.
func (b *Backoff) Remaining(mailbox string) time.Duration {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	t, ok := b.until[strings.ToLower(mailbox)]
	if !ok {
		return 0
	}
	return max(t.Sub(b.now()), 0)
}

// ThrottledText is the client-facing text for a login refused during a
// backoff: "throttled by Microsoft 365; retry in N s", N rounded up.
func ThrottledText(d time.Duration) string {
	secs := int64((d + time.Second - 1) / time.Second)
	return "throttled by Microsoft 365; retry in " + strconv.FormatInt(max(secs, 1), 10) + " s"
}

// ThrottleDelay reads Exchange's throttling text, "Request is throttled.
// Suggested Backoff Time: N milliseconds" (N in milliseconds), from an
// upstream reply. throttled reports whether text is a throttling reply at
// all; d is the suggested time, or 0 when there is none.
func ThrottleDelay(text string) (d time.Duration, throttled bool) {
	lower := strings.ToLower(text)
	if !strings.Contains(lower, "throttl") {
		return 0, false
	}
	const marker = "suggested backoff time:"
	i := strings.Index(lower, marker)
	if i < 0 {
		return 0, true
	}
	rest := strings.TrimLeft(lower[i+len(marker):], " ")
	n := 0
	for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	ms, err := strconv.ParseInt(rest[:n], 10, 64)
	if err != nil || ms <= 0 {
		return 0, true
	}
	if ms > int64(maxThrottleBackoff/time.Millisecond) {
		return maxThrottleBackoff, true
	}
	return time.Duration(ms) * time.Millisecond, true
}
