package auth

import (
	"context"
	"errors"
	"mailproxy/internal/testutil"
	"net/netip"
	"testing"
	"time"
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

func TestLockoutDelaysGrowThenBlock(t *testing.T) {
	l, c := newTestLockout(5)
	ctx := context.Background()
	want := []time.Duration{0, 250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second}
	for i, w := range want {
		if err := l.Before(ctx, "alice", addr1); err != nil {
			t.Fatalf("attempt %d: Before() = %v, want nil", i+1, err)
		}
		var got time.Duration
		for _, d := range c.TakeSlept() {
			got += d
		}
		if got != w {
			t.Errorf("attempt %d: delay = %v, want %v", i+1, got, w)
		}
		blocked := l.Failed("alice", addr1)
		if wantBlocked := i == len(want)-1; blocked != wantBlocked {
			t.Errorf("attempt %d: Failed() = %v, want %v", i+1, blocked, wantBlocked)
		}
	}
	if err := l.Before(ctx, "alice", addr1); !errors.Is(err, ErrLockedOut) {
		t.Errorf("Before() after 5 failures = %v, want ErrLockedOut", err)
	}
	// The username is blocked from other addresses too, and the address for
	// other usernames.
	if err := l.Before(ctx, "alice", addr2); !errors.Is(err, ErrLockedOut) {
		t.Errorf("Before(alice, other address) = %v, want ErrLockedOut", err)
	}
	if err := l.Before(ctx, "bob", addr1); !errors.Is(err, ErrLockedOut) {
		t.Errorf("Before(bob, same address) = %v, want ErrLockedOut", err)
	}
	if err := l.Before(ctx, "bob", addr2); err != nil {
		t.Errorf("Before(bob, other address) = %v, want nil", err)
	}
	c.Advance(15 * time.Minute)
	c.TakeSlept()
	if err := l.Before(ctx, "alice", addr1); err != nil {
		t.Errorf("Before() after the block = %v, want nil", err)
	}
	if s := c.TakeSlept(); len(s) != 0 {
		t.Errorf("delays after the block = %v, want none", s)
	}
}

func TestLockoutWindow(t *testing.T) {
	l, c := newTestLockout(3)
	l.Failed("alice", addr1)
	l.Failed("alice", addr1)
	c.Advance(10 * time.Minute) // the window has passed: counting starts over
	if l.Failed("alice", addr1) {
		t.Errorf("Failed() after the window = blocked, want not blocked")
	}
	if err := l.Before(context.Background(), "alice", addr1); err != nil {
		t.Errorf("Before() = %v, want nil", err)
	}
	if s := c.TakeSlept(); len(s) != 1 || s[0] != 250*time.Millisecond {
		t.Errorf("delay after one failure in the window = %v, want [250ms]", s)
	}
}

func TestLockoutSuccessClearsAddress(t *testing.T) {
	l, c := newTestLockout(3)
	ctx := context.Background()
	l.Failed("alice", addr1)
	l.Failed("alice", addr1)
	l.Succeeded("alice", addr1)
	c.TakeSlept()
	if err := l.Before(ctx, "carol", addr1); err != nil {
		t.Fatalf("Before(carol) = %v, want nil", err)
	}
	if s := c.TakeSlept(); len(s) != 0 {
		t.Errorf("delay for the address after a success = %v, want none", s)
	}
	// The username's count stays: a guesser elsewhere gains no tries.
	if err := l.Before(ctx, "alice", addr2); err != nil {
		t.Fatalf("Before(alice, other address) = %v, want nil", err)
	}
	if s := c.TakeSlept(); len(s) != 1 || s[0] != 500*time.Millisecond {
		t.Errorf("delay for the username from elsewhere = %v, want [500ms]", s)
	}
}

// An address that logged in to an account before is not stopped by a block
// of that username caused by someone else.
func TestLockoutTrustedAddressKeepsWorking(t *testing.T) {
	l, c := newTestLockout(3)
	ctx := context.Background()
	printer, attacker := addr1, addr2
	l.Succeeded("scanner", printer)
	for range 3 {
		l.Failed("scanner", attacker)
	}
	if err := l.Before(ctx, "scanner", attacker); !errors.Is(err, ErrLockedOut) {
		t.Errorf("Before(attacker) = %v, want ErrLockedOut", err)
	}
	c.TakeSlept()
	if err := l.Before(ctx, "scanner", printer); err != nil {
		t.Errorf("Before(printer) = %v, want nil", err)
	}
	if s := c.TakeSlept(); len(s) != 0 {
		t.Errorf("delay for the trusted printer = %v, want none", s)
	}
	// The printer's own failures still count against it.
	for range 3 {
		l.Failed("scanner", printer)
	}
	if err := l.Before(ctx, "scanner", printer); !errors.Is(err, ErrLockedOut) {
		t.Errorf("Before(printer) after its own failures = %v, want ErrLockedOut", err)
	}
}

func TestLockoutHonoursContext(t *testing.T) {
	l := NewLockout(5, time.Minute, time.Minute)
	l.Failed("alice", addr1)
	l.Failed("alice", addr1)
	l.Failed("alice", addr1) // the next attempt waits 1s
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if err := l.Before(ctx, "alice", addr1); !errors.Is(err, context.Canceled) {
		t.Errorf("Before(canceled ctx) = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("Before(canceled ctx) took %v, want it to return at once", d)
	}
}

func TestLockoutMappedAddress(t *testing.T) {
	l, _ := newTestLockout(2)
	l.Failed("a", netip.MustParseAddr("::ffff:192.0.2.1"))
	if !l.Failed("b", netip.MustParseAddr("192.0.2.1")) {
		t.Errorf("Failed() from the IPv4 form of an IPv4-mapped address = not blocked, want blocked")
	}
}

func TestLockoutNil(t *testing.T) {
	if l := NewLockout(0, time.Minute, time.Minute); l != nil {
		t.Fatalf("NewLockout(0, ...) = %v, want nil", l)
	}
	var l *Lockout
	if err := l.Before(context.Background(), "a", addr1); err != nil {
		t.Errorf("nil Before() = %v", err)
	}
	if l.Failed("a", addr1) {
		t.Errorf("nil Failed() = true")
	}
	l.Succeeded("a", addr1)
}

func TestLockoutTableBounded(t *testing.T) {
	l, c := newTestLockout(3)
	for i := range lockoutMaxEntries + 10 {
		l.Failed("user"+string(rune('a'+i%26))+itoa(i), addr1)
		if i%1000 == 0 {
			c.Advance(time.Second)
		}
	}
	l.mu.Lock()
	n := len(l.users)
	l.mu.Unlock()
	if n > lockoutMaxEntries {
		t.Errorf("users table has %d entries, want at most %d", n, lockoutMaxEntries)
	}
}

func itoa(i int) string {
	var b [20]byte
	n := len(b)
	for {
		n--
		b[n] = byte('0' + i%10)
		i /= 10
		if i == 0 {
			return string(b[n:])
		}
	}
}

// Accounts with a Lockout: failures count whether or not the account
// exists, a blocked attempt costs no KDF and looks like a wrong password,
// and another address still logs in.
func TestAccountsLockout(t *testing.T) {
	a := newTestAccounts([]AccountSpec{{Username: "alice@x", PasswordHash: cheapHash(t, "pw"), Tokens: &fakeTokens{"t"}}}, nil)
	l, c := newTestLockout(3)
	a.SetLockout(l)
	ctx := context.Background()

	for _, user := range []string{"alice@x", "ghost@x", "Alice@X"} {
		_, err := a.Authenticate(ctx, user, "wrong", addr1)
		wantAuthError(t, err, AuthFailed, msgInvalidCredentials)
	}
	if s := c.TakeSlept(); len(s) != 2 {
		t.Errorf("delays before attempts 2 and 3 = %v, want 2", s)
	}
	before := a.kdfRuns.Load()
	_, err := a.Authenticate(ctx, "alice@x", "pw", addr1)
	wantAuthError(t, err, AuthFailed, msgInvalidCredentials)
	if !errors.Is(err, ErrLockedOut) {
		t.Errorf("Authenticate(blocked) = %v, want it to wrap ErrLockedOut", err)
	}
	if got := a.kdfRuns.Load() - before; got != 0 {
		t.Errorf("a blocked attempt ran the KDF %d times, want 0", got)
	}
	// alice had three failures from addr1 (two as alice): her username is
	// not blocked, and another address logs in.
	if g, err := a.Authenticate(ctx, "alice@x", "pw", addr2); err != nil || g.Username != "alice@x" {
		t.Errorf("Authenticate(alice from another address) = %v, %v, want a grant", g, err)
	}

	// A context that ends during the delay: a temporary failure.
	a.SetLockout(nil)
	l2 := NewLockout(3, time.Minute, time.Minute)
	l2.Failed("alice@x", addr2)
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
		wantAuthError(t, err, AuthNeedsSignIn, clientText("account new@x is not signed in; an admin must run `mailproxy login new@x`"))
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
