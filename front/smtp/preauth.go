package smtp

import (
	"net"
	"os"
	"sync/atomic"
	"time"
)

// Pre-login bounds, as the IMAP front has them: an absolute deadline for
// logging in (go-smtp's ReadTimeout restarts with every command, so a
// client sending NOOP every few seconds held a slot for ever), a cap on
// commands before AUTH, and a cap on connections per listener that have
// not logged in yet, so that a flood of silent connections cannot take
// every slot from logged-in sessions or from the other protocol.
const (
	defaultPreAuthTimeout     = 60 * time.Second
	defaultMaxPreAuthCommands = 30
	defaultMaxPreAuthConns    = 200
)

// TooManyWaiting is the reply to a connection refused because its listener
// has MaxPreAuthConns connections that have not logged in.
const TooManyWaiting = "421 4.7.0 too many connections waiting to log in; try again later\r\n"

func (s *Server) preAuthTimeout() time.Duration {
	if s.PreAuthTimeout > 0 {
		return s.PreAuthTimeout
	}
	return defaultPreAuthTimeout
}

func (s *Server) maxPreAuthCommands() int {
	if s.MaxPreAuthCommands > 0 {
		return s.MaxPreAuthCommands
	}
	return defaultMaxPreAuthCommands
}

func (s *Server) maxPreAuthConns() int32 {
	if s.MaxPreAuthConns > 0 {
		return int32(s.MaxPreAuthConns)
	}
	return defaultMaxPreAuthConns
}

// preAuth is a connection's state before it logged in.
type preAuth struct {
	deadline time.Time
	waiting  *atomic.Int32 // the listener's count of connections not logged in
	done     atomic.Bool   // logged in (or closed): the bounds are off
	lines    atomic.Int64  // command lines read before login, while not in TLS
	tls      atomic.Bool   // STARTTLS done: lines can no longer be counted below TLS
	over     atomic.Bool   // too many commands
}

// admit counts c as waiting on its listener; it reports false (and
// counts nothing) when the listener has too many already.
func (c *conn) admit(waiting *atomic.Int32) bool {
	if waiting.Add(1) > c.srv.maxPreAuthConns() {
		waiting.Add(-1)
		return false
	}
	c.pre.waiting = waiting
	c.pre.deadline = c.start.Add(c.srv.preAuthTimeout())
	return true
}

// loggedIn lifts the pre-login bounds.
func (c *conn) loggedIn() {
	if c.pre.done.CompareAndSwap(false, true) && c.pre.waiting != nil {
		c.pre.waiting.Add(-1)
		if !c.pre.deadline.IsZero() {
			c.Conn.SetReadDeadline(time.Now().Add(c.srv.readTimeout()))
		}
	}
}

// timeoutErr makes go-smtp answer "421 4.4.2" and close, as for its own
// read timeout.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "too many commands before login" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

var _ net.Error = timeoutErr{}

func (c *conn) Read(p []byte) (int, error) {
	if c.pre.over.Load() {
		return 0, timeoutErr{}
	}
	n, err := c.readConn(p) // readahead.go
	if n > 0 && !c.pre.done.Load() && !c.pre.tls.Load() {
		limit := int64(c.srv.maxPreAuthCommands())
		seen := c.pre.lines.Load()
		for i := 0; i < n; i++ {
			if p[i] != '\n' {
				continue
			}
			if seen++; seen > limit {
				// Hand go-smtp the commands up to the limit only.
				n = i
				c.pre.over.Store(true)
				c.setOutcome("too many commands before login")
				c.log.Info("smtp: too many commands before login; closing", "limit", limit)
				break
			}
		}
		c.pre.lines.Store(seen)
	}
	if err != nil && !c.pre.done.Load() && !c.pre.deadline.IsZero() && os.IsTimeout(err) && !time.Now().Before(c.pre.deadline) {
		c.setOutcome("pre-auth timeout")
	}
	return n, err
}

// SetReadDeadline keeps go-smtp's per-command deadline from reaching past
// the pre-login deadline.
func (c *conn) SetReadDeadline(t time.Time) error {
	if !c.pre.done.Load() && !c.pre.deadline.IsZero() && (t.IsZero() || t.After(c.pre.deadline)) {
		t = c.pre.deadline
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetWriteDeadline(t)
}
