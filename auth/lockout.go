package auth

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"mailproxy/internal/wait"
)

// Lockout defaults: the delay before a login attempt grows from
// lockoutBaseDelay, doubling with each recent failure, up to lockoutMaxDelay.
const (
	lockoutBaseDelay = 250 * time.Millisecond
	lockoutMaxDelay  = 8 * time.Second
	// lockoutMaxEntries bounds each of the two tables: usernames and
	// addresses come from the network, so an attacker chooses how many.
	lockoutMaxEntries = 1 << 16
	// lockoutTrustFor is how long an address that logged in to an account
	// stays exempt from blocks of that username.
	lockoutTrustFor = 7 * 24 * time.Hour
	// lockoutMaxTrusted bounds the trusted addresses remembered per account.
	lockoutMaxTrusted = 16
)

// ErrLockedOut is the cause (for the log only) of a login refused because
// the address or the username had too many recent failures. The client is
// told "invalid credentials", as for a wrong password.
var ErrLockedOut = errors.New("too many failed logins: temporarily blocked")

// Lockout slows down and then stops password guessing. It counts failed
// logins per remote address and per username (folded, whether the account
// exists or not, so that the answers do not tell). Before each password
// check the attempt waits a delay that doubles with every failure in the
// window (250 ms, 500 ms, 1 s, ... up to 8 s); after Failures failures within
// Window the address or username is blocked for Duration: its logins are
// refused at once, without a password check.
//
// A successful login clears its address's count, and makes that address
// trusted for the account: a block of the username (someone guessing from
// elsewhere) does not stop a printer that has logged in from its own
// address before. The username's own count is not cleared by a success, so
// that a legitimate client logging in now and then does not give a guesser
// on other addresses a fresh set of tries.
//
// A nil *Lockout does nothing. Lockout is safe for concurrent use.
type Lockout struct {
	// Now is the clock and Sleep waits for d or until ctx ends (returning
	// ctx's error); nil means the real ones. Tests swap them. Set them
	// before first use.
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error

	failures int
	window   time.Duration
	duration time.Duration

	mu    sync.Mutex // protects addrs and users
	addrs map[netip.Addr]*strikes
	users map[string]*strikes
}

// strikes is the failure record of one address or username.
type strikes struct {
	n       int       // failures in the current window
	start   time.Time // first failure of the window
	until   time.Time // blocked until then
	trusted []trustedAddr
}

type trustedAddr struct {
	addr netip.Addr
	at   time.Time // last successful login from addr
}

// NewLockout returns a Lockout that blocks after failures failed logins
// within window, for duration. It returns nil (no lockout) when failures is
// 0 or less; window and duration of 0 or less default to 15 minutes.
func NewLockout(failures int, window, duration time.Duration) *Lockout {
	if failures <= 0 {
		return nil
	}
	if window <= 0 {
		window = 15 * time.Minute
	}
	if duration <= 0 {
		duration = 15 * time.Minute
	}
	return &Lockout{
		failures: failures,
		window:   window,
		duration: duration,
		addrs:    make(map[netip.Addr]*strikes),
		users:    make(map[string]*strikes),
	}
}

func (l *Lockout) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

func (l *Lockout) sleep(ctx context.Context, d time.Duration) error {
	if l.Sleep != nil {
		return l.Sleep(ctx, d)
	}
	return wait.Sleep(ctx, d)
}

// lockoutKey is the address a record is kept under: without an IPv4-mapped
// prefix or a zone, so that one client cannot appear as several.
func lockoutKey(a netip.Addr) netip.Addr { return a.Unmap().WithZone("") }

// Before is called before a password check of user (folded) from addr. It
// waits the delay that recent failures call for, honouring ctx, and then
// returns ErrLockedOut when the attempt is blocked, or ctx's error when ctx
// ended first.
func (l *Lockout) Before(ctx context.Context, user string, addr netip.Addr) error {
	if l == nil {
		return nil
	}
	addr = lockoutKey(addr)
	l.mu.Lock()
	now := l.now()
	delay, blocked := l.stateLocked(user, addr, now)
	l.mu.Unlock()
	if delay > 0 {
		if err := l.sleep(ctx, delay); err != nil {
			return err
		}
	}
	if blocked {
		return ErrLockedOut
	}
	// Other attempts may have failed while this one waited.
	l.mu.Lock()
	_, blocked = l.stateLocked(user, addr, l.now())
	l.mu.Unlock()
	if blocked {
		return ErrLockedOut
	}
	return nil
}

// stateLocked returns the delay before an attempt and whether it is
// blocked. l.mu must be held.
func (l *Lockout) stateLocked(user string, addr netip.Addr, now time.Time) (time.Duration, bool) {
	n := 0
	blocked := false
	if s := l.addrs[addr]; s != nil {
		n = s.count(now, l.window)
		blocked = now.Before(s.until)
	}
	if s := l.users[user]; s != nil && !s.trusts(addr, now) {
		n = max(n, s.count(now, l.window))
		blocked = blocked || now.Before(s.until)
	}
	if blocked {
		return lockoutMaxDelay, true
	}
	return lockoutDelay(n), false
}

// lockoutDelay is the wait before an attempt after n recent failures.
func lockoutDelay(n int) time.Duration {
	if n <= 0 {
		return 0
	}
	d := lockoutBaseDelay
	for i := 1; i < n && d < lockoutMaxDelay; i++ {
		d *= 2
	}
	return min(d, lockoutMaxDelay)
}

// count returns the failures in the window that is current at now.
func (s *strikes) count(now time.Time, window time.Duration) int {
	if s.n > 0 && now.Sub(s.start) >= window {
		return 0
	}
	return s.n
}

func (s *strikes) trusts(addr netip.Addr, now time.Time) bool {
	for _, t := range s.trusted {
		if t.addr == addr && now.Sub(t.at) < lockoutTrustFor {
			return true
		}
	}
	return false
}

// Failed records a failed password check of user (folded) from addr. It
// reports whether the address or the username is now blocked.
func (l *Lockout) Failed(user string, addr netip.Addr) bool {
	if l == nil {
		return false
	}
	addr = lockoutKey(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	a := l.addrLocked(addr, now)
	u := l.userLocked(user, now)
	blocked := l.strike(a, now)
	if !u.trusts(addr, now) {
		blocked = l.strike(u, now) || blocked
	}
	return blocked
}

// strike adds a failure to s and starts a block when there are enough.
func (l *Lockout) strike(s *strikes, now time.Time) bool {
	if s.count(now, l.window) == 0 {
		s.n, s.start = 0, now
	}
	s.n++
	if s.n >= l.failures {
		s.until = now.Add(l.duration)
		s.n = 0
	}
	return now.Before(s.until)
}

// Succeeded records a successful login of user (folded) from addr: the
// address's failures are forgotten and it is trusted for user.
func (l *Lockout) Succeeded(user string, addr netip.Addr) {
	if l == nil {
		return
	}
	addr = lockoutKey(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	delete(l.addrs, addr)
	u := l.userLocked(user, now)
	for i, t := range u.trusted {
		if t.addr == addr {
			u.trusted[i].at = now
			return
		}
	}
	if len(u.trusted) >= lockoutMaxTrusted {
		oldest := 0
		for i, t := range u.trusted {
			if t.at.Before(u.trusted[oldest].at) {
				oldest = i
			}
		}
		u.trusted = append(u.trusted[:oldest], u.trusted[oldest+1:]...)
	}
	u.trusted = append(u.trusted, trustedAddr{addr, now})
}

func (l *Lockout) addrLocked(addr netip.Addr, now time.Time) *strikes {
	s := l.addrs[addr]
	if s == nil {
		if len(l.addrs) >= lockoutMaxEntries {
			prune(l.addrs, now, l.window)
		}
		s = &strikes{}
		l.addrs[addr] = s
	}
	return s
}

func (l *Lockout) userLocked(user string, now time.Time) *strikes {
	s := l.users[user]
	if s == nil {
		if len(l.users) >= lockoutMaxEntries {
			prune(l.users, now, l.window)
		}
		s = &strikes{}
		l.users[user] = s
	}
	return s
}

// prune makes room in a full table: first it drops records that no longer
// matter (no failure in the window, no block, no trusted address), then, if
// that was not enough, any unblocked record, then any record.
func prune[K comparable](m map[K]*strikes, now time.Time, window time.Duration) {
	for k, s := range m {
		if s.count(now, window) == 0 && !now.Before(s.until) && !s.trustsAny(now) {
			delete(m, k)
		}
	}
	for k, s := range m {
		if len(m) < lockoutMaxEntries*3/4 {
			return
		}
		if !now.Before(s.until) {
			delete(m, k)
		}
	}
	for k := range m {
		if len(m) < lockoutMaxEntries*3/4 {
			return
		}
		delete(m, k)
	}
}

func (s *strikes) trustsAny(now time.Time) bool {
	for _, t := range s.trusted {
		if now.Sub(t.at) < lockoutTrustFor {
			return true
		}
	}
	return false
}
