package auth

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mailproxy/internal/testutil"
)

func newTestLockout(failures int) (*Lockout, *testutil.Clock) {
	c := testutil.NewClock()
	l := NewLockout(failures, 10*time.Minute, 15*time.Minute)
	l.Now, l.Sleep = c.Now, c.Sleep
	return l, c
}

var (
	addr1 = netip.MustParseAddr("192.0.2.1")
	addr2 = netip.MustParseAddr("192.0.2.2")
)

// fail makes one attempt that fails its password check.
func fail(t *testing.T, l *Lockout, user string, addr netip.Addr) error {
	t.Helper()
	return l.Begin(context.Background(), user, addr)
}

func TestLockoutDelaysGrowThenBlock(t *testing.T) {
	l, c := newTestLockout(5)
	want := []time.Duration{0, 250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second}
	for i, w := range want {
		if err := fail(t, l, "alice", addr1); err != nil {
			t.Fatalf("attempt %d: Begin() = %v, want nil", i+1, err)
		}
		var got time.Duration
		for _, d := range c.TakeSlept() {
			got += d
		}
		if got != w {
			t.Errorf("attempt %d: delay = %v, want %v", i+1, got, w)
		}
	}
	err := fail(t, l, "alice", addr1)
	var le *LockedOutError
	if !errors.As(err, &le) || !errors.Is(err, ErrLockedOut) {
		t.Fatalf("Begin() after 5 failures = %v, want a *LockedOutError", err)
	}
	if msg := le.Message(); !strings.HasPrefix(msg, "too many failed logins for alice from 192.0.2.1; try again after ") {
		t.Errorf("Message() = %q", msg)
	}
	// Only the pair is blocked.
	if err := fail(t, l, "alice", addr2); err != nil {
		t.Errorf("Begin(alice, other address) = %v, want nil", err)
	}
	if err := fail(t, l, "bob", addr1); err != nil {
		t.Errorf("Begin(bob, same address) = %v, want nil", err)
	}
	c.Advance(15 * time.Minute)
	c.TakeSlept()
	if err := l.Begin(context.Background(), "alice", addr1); err != nil {
		t.Errorf("Begin() after the block = %v, want nil", err)
	}
	if s := c.TakeSlept(); len(s) != 0 {
		t.Errorf("delays after the block = %v, want none", s)
	}
}

// 40 concurrent guesses from one address: an attempt counts when it
// starts, so at most `failures` of them reach a password check.
func TestLockoutConcurrentGuesses(t *testing.T) {
	l := NewLockout(5, time.Hour, time.Hour)
	release := make(chan struct{})
	l.Sleep = func(ctx context.Context, d time.Duration) error { <-release; return nil }
	var passed atomic.Int32
	var wg sync.WaitGroup
	var started sync.WaitGroup
	for range 40 {
		wg.Add(1)
		started.Add(1)
		go func() {
			defer wg.Done()
			started.Done()
			if l.Begin(context.Background(), "alice", addr1) == nil {
				passed.Add(1)
			}
		}()
	}
	started.Wait()
	close(release)
	wg.Wait()
	if n := passed.Load(); n != 5 {
		t.Errorf("attempts let through to a password check = %d, want 5", n)
	}
}

func TestLockoutWindow(t *testing.T) {
	l, c := newTestLockout(3)
	fail(t, l, "alice", addr1)
	fail(t, l, "alice", addr1)
	c.Advance(11 * time.Minute)
	fail(t, l, "alice", addr1)
	fail(t, l, "alice", addr1)
	if err := fail(t, l, "alice", addr1); err != nil {
		t.Errorf("Begin() with two failures in the window (the third) = %v, want nil", err)
	}
	if err := fail(t, l, "alice", addr1); err == nil {
		t.Errorf("Begin() after three failures in the window = nil, want blocked")
	}
}

// A stale client for one account next to a good one for another account on
// the same address: the good one keeps logging in, its successes do not
// clear the stale one's count, and the stale one ends up blocked alone.
func TestLockoutSuccessClearsOnlyItsPair(t *testing.T) {
	l, _ := newTestLockout(3)
	for range 2 {
		fail(t, l, "printer", addr1)
		if err := l.Begin(context.Background(), "alice", addr1); err != nil {
			t.Fatalf("Begin(alice) = %v", err)
		}
		l.Succeeded("alice", addr1)
	}
	fail(t, l, "printer", addr1)
	if err := fail(t, l, "printer", addr1); !errors.Is(err, ErrLockedOut) {
		t.Errorf("Begin(printer) after three failures between alice's successes = %v, want blocked", err)
	}
	if err := l.Begin(context.Background(), "alice", addr1); err != nil {
		t.Errorf("Begin(alice) next to the blocked printer = %v, want nil", err)
	}
	l.Succeeded("alice", addr1)
	// A success of the pair itself clears it.
	l2, _ := newTestLockout(3)
	fail(t, l2, "alice", addr1)
	fail(t, l2, "alice", addr1)
	l2.Begin(context.Background(), "alice", addr1)
	l2.Succeeded("alice", addr1)
	fail(t, l2, "alice", addr1)
	if err := fail(t, l2, "alice", addr1); err != nil {
		t.Errorf("Begin() after a success cleared two failures = %v, want nil", err)
	}
}

// One address guessing over many usernames meets the per-address cap.
func TestLockoutAddressCap(t *testing.T) {
	l, _ := newTestLockout(3) // address cap 12
	for i := range 12 {
		if err := fail(t, l, fmt.Sprintf("user%d", i), addr1); err != nil {
			t.Fatalf("attempt %d: Begin() = %v", i+1, err)
		}
	}
	err := fail(t, l, "alice", addr1)
	var le *LockedOutError
	if !errors.As(err, &le) || le.User != "" || !strings.HasPrefix(le.Message(), "too many failed logins from 192.0.2.1; ") {
		t.Errorf("Begin() after 12 usernames failed = %v, want the address blocked", err)
	}
	if err := fail(t, l, "alice", addr2); err != nil {
		t.Errorf("Begin(other address) = %v, want nil", err)
	}
	l3 := NewLockout(3, time.Hour, time.Hour, 5)
	l3.Sleep = func(context.Context, time.Duration) error { return nil }
	for i := range 5 {
		fail(t, l3, fmt.Sprintf("u%d", i), addr1)
	}
	if err := fail(t, l3, "x", addr1); !errors.Is(err, ErrLockedOut) {
		t.Errorf("address cap 5: Begin() after 5 = %v, want blocked", err)
	}
}

// IPv6 clients count per /64; IPv4-mapped addresses as IPv4.
func TestLockoutPrefixes(t *testing.T) {
	l, _ := newTestLockout(2)
	fail(t, l, "a", netip.MustParseAddr("2001:db8::1"))
	fail(t, l, "a", netip.MustParseAddr("2001:db8::ffff:2"))
	if err := fail(t, l, "a", netip.MustParseAddr("2001:db8::3%eth0")); !errors.Is(err, ErrLockedOut) {
		t.Errorf("Begin() from the same /64 = %v, want blocked", err)
	}
	if err := fail(t, l, "a", netip.MustParseAddr("2001:db8:0:1::1")); err != nil {
		t.Errorf("Begin() from another /64 = %v, want nil", err)
	}
	fail(t, l, "a", netip.MustParseAddr("::ffff:192.0.2.1"))
	fail(t, l, "a", addr1)
	if err := fail(t, l, "a", addr1); !errors.Is(err, ErrLockedOut) {
		t.Errorf("Begin() after failures from the IPv4-mapped form = %v, want blocked", err)
	}
	if got := l.Blocks(); len(got) != 2 || got[0].Addr != "2001:db8::/64" && got[1].Addr != "2001:db8::/64" {
		t.Errorf("Blocks() = %+v, want the /64 and 192.0.2.1", got)
	}
}

func TestLockoutBlocksAndClear(t *testing.T) {
	l, c := newTestLockout(2)
	changes := 0
	l.OnChange = func() { changes++ }
	fail(t, l, "alice", addr1)
	fail(t, l, "alice", addr1)
	blocks := l.Blocks()
	if len(blocks) != 1 || blocks[0].User != "alice" || blocks[0].Addr != "192.0.2.1" || !blocks[0].Until.After(c.Now().Add(14*time.Minute)) {
		t.Fatalf("Blocks() = %+v, want alice from 192.0.2.1 for 15 minutes", blocks)
	}
	if changes != 1 {
		t.Errorf("OnChange calls = %d, want 1", changes)
	}
	if !l.Clear("alice", "192.0.2.1") {
		t.Errorf("Clear() = false, want true")
	}
	if err := fail(t, l, "alice", addr1); err != nil {
		t.Errorf("Begin() after Clear = %v, want nil", err)
	}
	if l.Clear("alice", "192.0.2.1") || len(l.Blocks()) != 0 || changes != 2 {
		t.Errorf("after Clear: Clear again true, %d blocks, %d changes; want false, 0, 2", len(l.Blocks()), changes)
	}
}

// A check that could not be made does not count.
func TestLockoutRefund(t *testing.T) {
	l, _ := newTestLockout(2)
	for range 5 {
		if err := l.Begin(context.Background(), "alice", addr1); err != nil {
			t.Fatalf("Begin() = %v, want nil (refunded attempts do not count)", err)
		}
		l.Refund("alice", addr1)
	}
}

func TestLockoutHonoursContext(t *testing.T) {
	l := NewLockout(5, time.Minute, time.Minute)
	l.Sleep = func(context.Context, time.Duration) error { return nil }
	for range 3 {
		l.Begin(context.Background(), "alice", addr1)
	}
	l.Sleep = nil // the next attempt waits 1s for real
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if err := l.Begin(ctx, "alice", addr1); !errors.Is(err, context.Canceled) {
		t.Errorf("Begin(canceled ctx) = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("Begin(canceled ctx) took %v, want it to return at once", d)
	}
}

func TestLockoutNil(t *testing.T) {
	if l := NewLockout(0, time.Minute, time.Minute); l != nil {
		t.Fatalf("NewLockout(0, ...) = %v, want nil", l)
	}
	var l *Lockout
	if err := l.Begin(context.Background(), "a", addr1); err != nil {
		t.Errorf("nil Begin() = %v", err)
	}
	l.Succeeded("a", addr1)
	l.Refund("a", addr1)
	if l.Blocks() != nil || l.Clear("a", "192.0.2.1") {
		t.Errorf("nil Blocks/Clear not empty")
	}
}

func TestLockoutTableBounded(t *testing.T) {
	l, c := newTestLockout(3)
	for i := range lockoutMaxEntries + 10 {
		fail(t, l, fmt.Sprintf("user%d", i), netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
		if i%1000 == 0 {
			c.Advance(time.Second)
		}
	}
	l.mu.Lock()
	n, m := len(l.pairs), len(l.addrs)
	l.mu.Unlock()
	if n > lockoutMaxEntries || m > lockoutMaxEntries {
		t.Errorf("tables have %d pairs and %d addresses, want at most %d", n, m, lockoutMaxEntries)
	}
}

// Accounts with a Lockout: failures count whether or not the account
// exists, a blocked attempt costs no KDF and is a temporary refusal that
// says why, and another address still logs in.
func TestAccountsLockout(t *testing.T) {
	a := newTestAccounts([]AccountSpec{{Username: "alice@x", PasswordHash: cheapHash(t, "pw"), Tokens: &fakeTokens{"t"}}}, nil)
	l, c := newTestLockout(3)
	a.SetLockout(l)
	ctx := context.Background()

	for range 3 {
		_, err := a.Authenticate(ctx, "Alice@X", "wrong", addr1)
		wantAuthError(t, err, AuthFailed, msgInvalidCredentials)
	}
	if s := c.TakeSlept(); len(s) != 2 {
		t.Errorf("delays before attempts 2 and 3 = %v, want 2", s)
	}
	before := a.kdfRuns.Load()
	_, err := a.Authenticate(ctx, "alice@x", "pw", addr1)
	var ae *AuthError
	if !errors.As(err, &ae) || ae.Kind != AuthUnavailable || !errors.Is(err, ErrLockedOut) ||
		!strings.HasPrefix(ae.Msg, "too many failed logins for alice@x from 192.0.2.1; try again after ") {
		t.Errorf("Authenticate(blocked) = %v, want AuthUnavailable wrapping ErrLockedOut with the reason", err)
	}
	if got := a.kdfRuns.Load() - before; got != 0 {
		t.Errorf("a blocked attempt ran the KDF %d times, want 0", got)
	}
	if _, err := a.Authenticate(ctx, "ghost@x", "wrong", addr1); err == nil || errors.Is(err, ErrLockedOut) {
		t.Errorf("Authenticate(other username, same address) = %v, want a plain failure", err)
	}
	if g, err := a.Authenticate(ctx, "alice@x", "pw", addr2); err != nil || g.Username != "alice@x" {
		t.Errorf("Authenticate(alice from another address) = %v, %v, want a grant", g, err)
	}

	// A context that ends during the delay: a temporary failure.
	l2 := NewLockout(3, time.Minute, time.Minute)
	l2.Sleep = func(context.Context, time.Duration) error { return nil }
	l2.Begin(ctx, "alice@x", addr2)
	l2.Sleep = nil
	a.SetLockout(l2)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = a.Authenticate(cctx, "alice@x", "pw", addr2)
	wantAuthError(t, err, AuthUnavailable, "server busy; "+msgTryLater)
}

// A vault account's wrong password counts; a not-signed-in one does not.
func TestAccountsLockoutVault(t *testing.T) {
	v := &fakeVault{entries: map[string]vaultEntry{"v@x": {password: "pw", tokens: &fakeTokens{"t"}}}}
	a := newTestAccounts([]AccountSpec{{Username: "v@x"}, {Username: "new@x"}}, v)
	l, _ := newTestLockout(2)
	a.SetLockout(l)
	ctx := context.Background()
	for range 3 {
		_, err := a.Authenticate(ctx, "new@x", "x", addr1)
		wantAuthError(t, err, AuthNeedsSignIn, ClientText("account new@x is not signed in; an admin must run `mailproxy login new@x`"))
	}
	if _, err := a.Authenticate(ctx, "v@x", "wrong", addr1); err == nil {
		t.Fatalf("Authenticate(wrong) = nil error")
	}
	if _, err := a.Authenticate(ctx, "v@x", "wrong", addr1); err == nil {
		t.Fatalf("Authenticate(wrong) = nil error")
	}
	if _, err := a.Authenticate(ctx, "v@x", "pw", addr1); !errors.Is(err, ErrLockedOut) {
		t.Errorf("Authenticate() after two wrong passwords = %v, want ErrLockedOut", err)
	}
}

// 40 concurrent wrong guesses from one address through Accounts: at most
// lockout_failures of them cost a password check.
func TestAccountsConcurrentGuesses(t *testing.T) {
	a := newTestAccounts([]AccountSpec{{Username: "alice@x", PasswordHash: cheapHash(t, "pw"), Tokens: &fakeTokens{"t"}}}, nil)
	l := NewLockout(5, time.Hour, time.Hour)
	l.Sleep = func(context.Context, time.Duration) error { return nil }
	a.SetLockout(l)
	before := a.kdfRuns.Load()
	var wg sync.WaitGroup
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.Authenticate(context.Background(), "alice@x", "guess", addr1)
		}()
	}
	wg.Wait()
	if n := a.kdfRuns.Load() - before; n > 5 {
		t.Errorf("password checks for 40 concurrent guesses = %d, want at most 5", n)
	}
}

// blockingVault holds every Open until release is closed.
type blockingVault struct {
	inside, peak atomic.Int32
	release      chan struct{}
}

func (v *blockingVault) Open(ctx context.Context, username, password string) (TokenSource, string, error) {
	n := v.inside.Add(1)
	for {
		p := v.peak.Load()
		if n <= p || v.peak.CompareAndSwap(p, n) {
			break
		}
	}
	<-v.release
	v.inside.Add(-1)
	return nil, "", ErrBadCredentials
}

// Vault logins take the same KDF slots as hash logins.
func TestVaultLoginsTakeKDFSlots(t *testing.T) {
	v := &blockingVault{release: make(chan struct{})}
	a := newTestAccounts([]AccountSpec{{Username: "v@x"}}, v)
	slots := cap(a.kdfSlots)
	var wg sync.WaitGroup
	for range slots + 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.Authenticate(context.Background(), "v@x", "guess", addr1)
		}()
	}
	// Wait until the slots are full: every slot holder is inside Open.
	for v.inside.Load() < int32(slots) {
		runtime.Gosched()
	}
	close(v.release)
	wg.Wait()
	if p := v.peak.Load(); p > int32(slots) {
		t.Errorf("vault opens at once = %d, want at most the %d KDF slots", p, slots)
	}
}
