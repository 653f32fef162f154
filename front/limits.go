package front

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// refusalWriteTimeout bounds writing the refusal line to a connection
	// over the limit. A fresh socket's send buffer is empty, so the write
	// does not block; the deadline is there for the odd case.
	refusalWriteTimeout = 100 * time.Millisecond
	// refusalLogEvery: under a flood, refused connections are logged at
	// most once per interval, with the count of those not logged.
	refusalLogEvery = 10 * time.Second
)

// ConnLimiter counts open client connections, in total and per remote
// address, across every listener it wraps. A limit of 0 or less is no
// limit. It is safe for concurrent use.
type ConnLimiter struct {
	mu    sync.Mutex // protects total, perIP, open, byIP and log
	total int
	perIP int
	open  int
	byIP  map[netip.Addr]int
	log   refusalLog
	flood atomic.Int64 // refused connections, for tests and metrics
}

// NewConnLimiter returns a limiter allowing total connections at once, and
// perIP from any one address.
func NewConnLimiter(total, perIP int) *ConnLimiter {
	return &ConnLimiter{total: total, perIP: perIP, byIP: make(map[netip.Addr]int)}
}

// SetLimits changes the limits (config reload). Connections already open
// stay; new ones are counted against the new limits.
func (l *ConnLimiter) SetLimits(total, perIP int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total, l.perIP = total, perIP
}

// Refused returns how many connections the limiter has refused.
func (l *ConnLimiter) Refused() int64 { return l.flood.Load() }

// Open returns the connections open now.
func (l *ConnLimiter) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

// acquire takes a slot for a connection from ip; reason says which limit
// refused it.
func (l *ConnLimiter) acquire(ip netip.Addr) (ok bool, reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total > 0 && l.open >= l.total {
		return false, "max_connections"
	}
	if l.perIP > 0 && l.byIP[ip] >= l.perIP {
		return false, "max_connections_per_ip"
	}
	l.open++
	l.byIP[ip]++
	return true, ""
}

// refused counts a refused connection and says whether to log it now, with
// the number of refusals since the last line.
func (l *ConnLimiter) refused() (int64, bool) {
	l.flood.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.log.note(time.Now())
}

func (l *ConnLimiter) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if n := l.byIP[ip] - 1; n > 0 {
		l.byIP[ip] = n
	} else {
		delete(l.byIP, ip)
	}
}

// Listener wraps ln: a connection over the limits is answered with refusal
// (a protocol line such as "* BYE too many connections\r\n"; empty for
// none, as on an implicit TLS listener where nothing can be said before the
// handshake) and closed at once, without reaching the server; the others
// hold their slot until closed.
//
// Put the wrapper under any tls.NewListener, so that the servers still see
// the *tls.Conn: Listener(ln, ...) first, then tls.NewListener around it.
// The connections it returns keep CloseWrite (half-close) working.
func (l *ConnLimiter) Listener(ln net.Listener, refusal string, logger *slog.Logger) net.Listener {
	if logger == nil {
		logger = slog.Default()
	}
	return &limitListener{Listener: ln, l: l, refusal: []byte(refusal), logger: logger}
}

type limitListener struct {
	net.Listener
	l       *ConnLimiter
	refusal []byte
	logger  *slog.Logger
}

func (ll *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := ll.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteIP(c)
		ok, reason := ll.l.acquire(ip)
		if ok {
			return &limitConn{Conn: c, l: ll.l, ip: ip}, nil
		}
		n, log := ll.l.refused()
		if len(ll.refusal) > 0 {
			c.SetWriteDeadline(time.Now().Add(refusalWriteTimeout))
			c.Write(ll.refusal)
		}
		c.Close()
		if log {
			ll.logger.Warn("connection refused: too many connections",
				"remote", ip.String(), "limit", reason, "refused_since_last_log", n)
		}
	}
}

// remoteIP is c's remote address without port, IPv4-mapped prefix or zone.
func remoteIP(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap().WithZone("")
	}
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap().WithZone("")
	}
	return netip.Addr{}
}

// refusalLog rate-limits the refusal log line.
type refusalLog struct {
	last       time.Time
	suppressed int64
}

// note counts a refusal and reports whether to log it now, with the number
// of refusals since the last line (this one included). The caller holds
// ConnLimiter.mu.
func (r *refusalLog) note(now time.Time) (int64, bool) {
	r.suppressed++
	if !r.last.IsZero() && now.Sub(r.last) < refusalLogEvery {
		return 0, false
	}
	r.last = now
	n := r.suppressed
	r.suppressed = 0
	return n, true
}

// limitConn gives its slot back when closed.
type limitConn struct {
	net.Conn
	l      *ConnLimiter
	ip     netip.Addr
	closed atomic.Bool
}

// SyscallConn passes the socket on, so that relay.UnderTLS can read it
// without blocking.
func (c *limitConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.New("front: the connection has no socket")
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	if c.closed.CompareAndSwap(false, true) {
		c.l.release(c.ip)
	}
	return err
}

// CloseWrite half-closes the connection when the one underneath can; else
// it fails and the caller closes the connection instead.
func (c *limitConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
