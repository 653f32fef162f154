package auth

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"mailproxy/internal/wait"
)

// Lockout defaults: the delay before a login attempt grows from
// lockoutBaseDelay, doubling with each recent failure, up to lockoutMaxDelay.
const (
	lockoutBaseDelay = 250 * time.Millisecond
	lockoutMaxDelay  = 8 * time.Second
	// lockoutMaxEntries bounds each table: usernames and addresses come
	// from the network, so an attacker chooses how many.
	lockoutMaxEntries = 1 << 16
	// lockoutIPv6Bits is the prefix an IPv6 client is counted under: one
	// host usually holds a whole /64 and can pick any address in it.
	lockoutIPv6Bits = 64
)

// ErrLockedOut is wrapped by the error of a login refused because its
// address and username (or the address alone) had too many recent failures.
var ErrLockedOut = errors.New("too many failed logins: temporarily blocked")

// LockedOutError says which block refused a login and until when. Its
// Message is what the client is told: a temporary failure that says why,
// so that an admin who reads the client's error knows what happened.
type LockedOutError struct {
	User  string // folded username; "" for a block of the whole address
	Addr  string // the address, or the IPv6 /64, as counted
	Until time.Time
}

func (e *LockedOutError) Error() string { return e.Message() }
func (e *LockedOutError) Unwrap() error { return ErrLockedOut }

// Message is the client-facing text.
func (e *LockedOutError) Message() string {
	at := e.Until.Local().Format("15:04 MST")
	if e.User == "" {
		return fmt.Sprintf("too many failed logins from %s; try again after %s", e.Addr, at)
	}
	return fmt.Sprintf("too many failed logins for %s from %s; try again after %s", e.User, e.Addr, at)
}

// Lockout slows down and then stops password guessing without letting a
// guesser (or a client with a stale password) lock other people out.
//
// An attempt counts as a failure when it starts, so that concurrent
// guesses are counted before any of them is checked; a success takes its
// own count back and clears the failures of its pair. Counts are kept per
// pair of remote address and username (folded, whether the account exists
// or not, so that the answers do not tell): after Failures within Window
// the pair is blocked for Duration, and only that pair: a printer with a
// stale password for one account does not block the other accounts used
// from the same address. Besides, each address has a cap across all
// usernames (AddressFailures, higher), which stops one address from
// spraying guesses over many usernames. IPv6 addresses count per /64.
//
// Before each check the attempt waits a delay that doubles with every
// recent failure of its pair (250 ms, 500 ms, 1 s, ... up to 8 s).
//
// A nil *Lockout does nothing. Lockout is safe for concurrent use.
type Lockout struct {
	// Now is the clock and Sleep waits for d or until ctx ends (returning
	// ctx's error); nil means the real ones. Tests swap them. Set them
	// before first use.
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error
	// OnChange, if set, is called (without locks held) after a block
	// started or was cleared, e.g. to write the blocks where `mailproxy
	// status` reads them. Set it before first use.
	OnChange func()

	failures     int
	addrFailures int
	window       time.Duration
	duration     time.Duration

	mu    sync.Mutex // protects pairs and addrs
	pairs map[pairKey]*strikes
	addrs map[netip.Prefix]*strikes
}

type pairKey struct {
	addr netip.Prefix
	user string
}

// strikes is the failure record of one pair or address.
type strikes struct {
	n     int       // failures in the current window, attempts in flight included
	start time.Time // first failure of the window
	until time.Time // blocked until then
}

// Block is an active block, for the admin page and `mailproxy status`.
type Block struct {
	User  string    `json:"user,omitempty"` // "" for the per-address cap
	Addr  string    `json:"addr"`           // address or IPv6 /64
	Until time.Time `json:"until"`
}

// NewLockout returns a Lockout that blocks a pair of address and username
// after failures failed logins within window, for duration, and an address
// after addrFailures failures over all usernames (0 or less: four times
// failures). It returns nil (no lockout) when failures is 0 or less;
// window and duration of 0 or less default to 15 minutes.
func NewLockout(failures int, window, duration time.Duration, addrFailures ...int) *Lockout {
	if failures <= 0 {
		return nil
	}
	if window <= 0 {
		window = 15 * time.Minute
	}
	if duration <= 0 {
		duration = 15 * time.Minute
	}
	af := 4 * failures
	if len(addrFailures) > 0 && addrFailures[0] > 0 {
		af = max(addrFailures[0], failures)
	}
	return &Lockout{
		failures:     failures,
		addrFailures: af,
		window:       window,
		duration:     duration,
		pairs:        make(map[pairKey]*strikes),
		addrs:        make(map[netip.Prefix]*strikes),
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

// LockoutPrefix is what an address is counted under: IPv4 addresses alone
// (an IPv4-mapped IPv6 address as its IPv4 address, no zone), IPv6 per /64.
func LockoutPrefix(a netip.Addr) netip.Prefix {
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(lockoutIPv6Bits)
		return p
	}
	return netip.PrefixFrom(a, a.BitLen())
}

func prefixString(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// Begin is called before a password check of user (folded) from addr. It
// counts the attempt as a failure, waits the delay that the pair's recent
// failures call for (honouring ctx) and returns a *LockedOutError when the
// attempt is blocked, or ctx's error when ctx ended first. After a nil
// error the caller reports the outcome with Succeeded, or with Refund when
// the check could not be made (nothing was learnt about the password); a
// failed check needs no call.
func (l *Lockout) Begin(ctx context.Context, user string, addr netip.Addr) error {
	if l == nil {
		return nil
	}
	p := LockoutPrefix(addr)
	k := pairKey{p, user}
	l.mu.Lock()
	now := l.now()
	if err := l.blockedLocked(k, now); err != nil {
		l.mu.Unlock()
		return err
	}
	ps, as := l.pairLocked(k, now), l.addrLocked(p, now)
	delay := lockoutDelay(ps.count(now, l.window))
	started := l.strike(ps, now, l.failures)
	started = l.strike(as, now, l.addrFailures) || started
	l.mu.Unlock()
	if started {
		l.changed()
	}
	if delay > 0 {
		if err := l.sleep(ctx, delay); err != nil {
			l.Refund(user, addr)
			return err
		}
	}
	return nil
}

// blockedLocked returns the block that refuses k now, if any.
func (l *Lockout) blockedLocked(k pairKey, now time.Time) error {
	// A block starts with the attempt that reached the limit; that attempt
	// and those counted before it are checked, every later one is refused.
	if s := l.addrs[k.addr]; s != nil && now.Before(s.until) {
		return &LockedOutError{Addr: prefixString(k.addr), Until: s.until}
	}
	if s := l.pairs[k]; s != nil && now.Before(s.until) {
		return &LockedOutError{User: k.user, Addr: prefixString(k.addr), Until: s.until}
	}
	return nil
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

// strike adds a failure to s and starts a block when there are limit; it
// reports whether a block started. The count starts again from zero after
// the block.
func (l *Lockout) strike(s *strikes, now time.Time, limit int) bool {
	if now.Before(s.until) {
		return false
	}
	if s.count(now, l.window) == 0 {
		s.n, s.start = 0, now
	}
	s.n++
	if s.n >= limit {
		s.until = now.Add(l.duration)
		s.n = 0
		return true
	}
	return false
}

// Succeeded records a successful login of user (folded) from addr: the
// pair's failures and block are forgotten, and the attempt's count on the
// address is taken back. Other pairs of the address keep theirs.
func (l *Lockout) Succeeded(user string, addr netip.Addr) {
	if l == nil {
		return
	}
	p := LockoutPrefix(addr)
	l.mu.Lock()
	ps := l.pairs[pairKey{p, user}]
	cleared := ps != nil && !ps.until.IsZero() && l.now().Before(ps.until)
	delete(l.pairs, pairKey{p, user})
	if as := l.addrs[p]; as != nil && as.n > 0 {
		as.n--
	}
	l.mu.Unlock()
	if cleared {
		l.changed()
	}
}

// Refund takes back the count of an attempt whose password could not be
// checked (server busy, identity provider down, client gone).
func (l *Lockout) Refund(user string, addr netip.Addr) {
	if l == nil {
		return
	}
	p := LockoutPrefix(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	if ps := l.pairs[pairKey{p, user}]; ps != nil && ps.n > 0 {
		ps.n--
	}
	if as := l.addrs[p]; as != nil && as.n > 0 {
		as.n--
	}
}

// Blocks returns the active blocks, soonest to end first.
func (l *Lockout) Blocks() []Block {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	now := l.now()
	var out []Block
	for k, s := range l.pairs {
		if now.Before(s.until) {
			out = append(out, Block{User: k.user, Addr: prefixString(k.addr), Until: s.until})
		}
	}
	for p, s := range l.addrs {
		if now.Before(s.until) {
			out = append(out, Block{Addr: prefixString(p), Until: s.until})
		}
	}
	l.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Until.Equal(out[j].Until) {
			return out[i].Until.Before(out[j].Until)
		}
		return out[i].Addr+" "+out[i].User < out[j].Addr+" "+out[j].User
	})
	return out
}

// Clear ends the block of user from addr (as Blocks reports them; user ""
// is the address's cap) and forgets its failures. It reports whether
// there was such a block.
func (l *Lockout) Clear(user, addr string) bool {
	if l == nil {
		return false
	}
	p, err := netip.ParsePrefix(addr)
	if err != nil {
		a, err := netip.ParseAddr(addr)
		if err != nil {
			return false
		}
		p = LockoutPrefix(a)
	}
	user = strings.ToLower(user)
	l.mu.Lock()
	now := l.now()
	found := false
	if user == "" {
		if s := l.addrs[p]; s != nil && now.Before(s.until) {
			found = true
		}
		delete(l.addrs, p)
	} else {
		if s := l.pairs[pairKey{p, user}]; s != nil && now.Before(s.until) {
			found = true
		}
		delete(l.pairs, pairKey{p, user})
	}
	l.mu.Unlock()
	if found {
		l.changed()
	}
	return found
}

func (l *Lockout) changed() {
	if l.OnChange != nil {
		l.OnChange()
	}
}

func (l *Lockout) pairLocked(k pairKey, now time.Time) *strikes {
	return strikesIn(l.pairs, k, now, l.window)
}

func (l *Lockout) addrLocked(p netip.Prefix, now time.Time) *strikes {
	return strikesIn(l.addrs, p, now, l.window)
}

// strikesIn returns k's record in table m, adding one (after pruning a
// full table) if there is none.
func strikesIn[K comparable](m map[K]*strikes, k K, now time.Time, window time.Duration) *strikes {
	s := m[k]
	if s == nil {
		if len(m) >= lockoutMaxEntries {
			prune(m, now, window)
		}
		s = &strikes{}
		m[k] = s
	}
	return s
}

// prune makes room in a full table: first it drops records that no longer
// matter (no failure in the window, no block), then, if that was not
// enough, any unblocked record, then any record.
func prune[K comparable](m map[K]*strikes, now time.Time, window time.Duration) {
	for k, s := range m {
		if s.count(now, window) == 0 && !now.Before(s.until) {
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
