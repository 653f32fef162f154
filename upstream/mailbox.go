package upstream

import (
	"strings"
	"sync"
)

const (
	// DefaultMaxUpstreamPerMailbox is the default cap of concurrent upstream
	// IMAP connections per mailbox: Exchange Online allows about 20.
	DefaultMaxUpstreamPerMailbox = 16
)

// MailboxLimiter caps concurrent sessions per mailbox (matched
// case-insensitively). A nil *MailboxLimiter has no cap. It is safe for
// concurrent use.
type MailboxLimiter struct {
	max int

	mu sync.Mutex // protects n
	n  map[string]int
}

// NewMailboxLimiter returns a limiter allowing max sessions per mailbox;
// max of 0 or less means DefaultMaxUpstreamPerMailbox.
func NewMailboxLimiter(max int) *MailboxLimiter {
	if max <= 0 {
		max = DefaultMaxUpstreamPerMailbox
	}
	return &MailboxLimiter{max: max, n: make(map[string]int)}
}

// Acquire takes a slot for mailbox without waiting. It returns false when
// the mailbox is at its cap; otherwise call release (once) when the session
// ends.
func (m *MailboxLimiter) Acquire(mailbox string) (release func(), ok bool) {
	if m == nil {
		return func() {}, true
	}
	key := strings.ToLower(mailbox)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.n[key] >= m.max {
		return nil, false
	}
	m.n[key]++
	var once sync.Once
	return func() {
		once.Do(func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			if n := m.n[key] - 1; n > 0 {
				m.n[key] = n
			} else {
				delete(m.n, key)
			}
		})
	}, true
}

// InUse returns the sessions open for mailbox.
func (m *MailboxLimiter) InUse(mailbox string) int {
	if m == nil {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.n[strings.ToLower(mailbox)]
}
