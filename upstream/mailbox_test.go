package upstream

import "testing"

func TestMailboxLimiter(t *testing.T) {
	m := NewMailboxLimiter(2)
	r1, ok1 := m.Acquire("Alice@x")
	r2, ok2 := m.Acquire("alice@X")
	if !ok1 || !ok2 {
		t.Fatalf("Acquire() twice = %v, %v, want true, true", ok1, ok2)
	}
	if _, ok := m.Acquire("alice@x"); ok {
		t.Errorf("third Acquire(alice) = true, want false")
	}
	if _, ok := m.Acquire("bob@x"); !ok {
		t.Errorf("Acquire(bob) = false, want true")
	}
	r1()
	r1() // idempotent
	if got := m.InUse("ALICE@x"); got != 1 {
		t.Errorf("InUse() after one release = %d, want 1", got)
	}
	if _, ok := m.Acquire("alice@x"); !ok {
		t.Errorf("Acquire() after a release = false, want true")
	}
	r2()
	if got := NewMailboxLimiter(0).max; got != DefaultMaxUpstreamPerMailbox {
		t.Errorf("NewMailboxLimiter(0) cap = %d, want %d", got, DefaultMaxUpstreamPerMailbox)
	}
	var nilLimiter *MailboxLimiter
	if release, ok := nilLimiter.Acquire("x"); !ok {
		t.Errorf("nil Acquire() = false, want true")
	} else {
		release()
	}
}
