package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// relayBufSize is the size of the pooled copy buffers.
	relayBufSize = 32 << 10
	// relayWaitSize is the size of each direction's own small buffer. An idle
	// session waits in Read on it, so that it does not sit on a pooled
	// buffer: 10,000 idle sessions must stay cheap.
	relayWaitSize = 2 << 10
	// tlsMaxRecord is the largest TLS record payload. A read of exactly that
	// much from a *tls.Conn means the peer wrote a long stretch, so more is
	// likely on the way.
	tlsMaxRecord = 16 << 10
	// halfCloseIdle bounds how long the remaining direction may stall once
	// the other one has ended: a peer that half-closed and then neither
	// reads nor writes must not pin the session forever.
	halfCloseIdle = 2 * time.Minute
	// idleRefresh is how often, at most, a direction that is moving data
	// pushes its read deadline forward when Relay has an idle timeout:
	// setting a deadline per chunk would cost more than the copy.
	idleRefresh = time.Second
)

// ErrIdleTimeout is wrapped by the error of a session that RelayIdle ended
// because neither direction moved a byte for the idle timeout.
var ErrIdleTimeout = errors.New("relay: idle timeout")

// relayBufs holds *[relayBufSize]byte; pointers, so Get and Put do not
// allocate.
var relayBufs = sync.Pool{New: func() any { return new([relayBufSize]byte) }}

// Relay copies bytes between client and upstream, both ways, until both
// directions have ended, then closes both connections and returns the byte
// counts (including the buffered bytes below).
//
// clientBuf and upstreamBuf, when not nil, are the bufio.Readers the caller
// read the conversation so far through (pipelined commands, the rest of a
// greeting); they must read from client and upstream respectively. Their
// buffered bytes are forwarded first; after that Relay reads the
// connections directly and drops its references to the readers, so a caller
// that drops its own lets them be collected while the session lasts.
// Callers flush their own writers before calling Relay.
//
// Any deadlines on the connections are cleared. Each direction copies
// through a pooled 32 KiB buffer, taken only while data flows: an idle
// direction waits in Read on a 2 KiB buffer of its own, so an idle session
// costs Relay about 4 KiB and one goroutine besides the caller's. Nothing
// is allocated per chunk. A direction writes each chunk before reading the
// next, so a slow reader slows the other side down (back-pressure) and at
// most one buffer of data is in flight per direction.
//
// When a source ends (EOF), its direction half-closes the destination
// (CloseWrite on *net.TCPConn, *tls.Conn or anything with a CloseWrite
// method; otherwise Close) and the other direction carries on, but from
// then on each of its reads and writes must complete within two minutes.
// Any other read or write error closes both connections at once so that the
// other direction's Read or Write returns too; Close on either connection
// from outside (shutdown) does the same.
//
// err is the error that ended the session, naming the operation ("read from
// client: ...", "write to upstream: ..."). It is nil when both directions
// ended by EOF, and errors that follow from that are not reported: reading a
// connection Relay closed itself, or writing to a peer that had already sent
// EOF and then went away (a client that sends LOGOUT and closes without
// waiting for the answer).
func Relay(client net.Conn, clientBuf *bufio.Reader, upstream net.Conn, upstreamBuf *bufio.Reader) (toUpstream, toClient int64, err error) {
	return relayWith(client, clientBuf, upstream, upstreamBuf, halfCloseIdle, 0)
}

// RelayIdle is Relay that also ends the session when neither direction has
// moved a byte for idle (0 or less: never); err then wraps ErrIdleTimeout.
// Only silence in both directions counts: a client in IMAP IDLE that hears
// from the upstream now and then is not idle. To stay cheap on the hot path
// each direction pushes its read deadline forward at most once a second,
// and a deadline that fires while the other direction moved data recently
// is pushed forward instead of ending the session.
func RelayIdle(client net.Conn, clientBuf *bufio.Reader, upstream net.Conn, upstreamBuf *bufio.Reader, idle time.Duration) (toUpstream, toClient int64, err error) {
	return relayWith(client, clientBuf, upstream, upstreamBuf, halfCloseIdle, idle)
}

// relay is Relay with the half-close idle limit as a parameter, for tests.
func relay(client net.Conn, clientBuf *bufio.Reader, upstream net.Conn, upstreamBuf *bufio.Reader, linger time.Duration) (toUpstream, toClient int64, err error) {
	return relayWith(client, clientBuf, upstream, upstreamBuf, linger, 0)
}

// relayWith is RelayIdle with the half-close idle limit as a parameter.
func relayWith(client net.Conn, clientBuf *bufio.Reader, upstream net.Conn, upstreamBuf *bufio.Reader, linger, idle time.Duration) (toUpstream, toClient int64, err error) {
	r := &relaySession{linger: linger, idle: max(idle, 0), start: time.Now()}
	r.refresh = min(idleRefresh, r.idle/4)
	r.conns = [2]net.Conn{client, upstream}
	r.halves[0] = relayHalf{r: r, src: 0, dst: 1}
	r.halves[1] = relayHalf{r: r, src: 1, dst: 0}
	for _, c := range r.conns {
		c.SetDeadline(time.Time{})
	}

	r.wg.Add(1)
	go r.halves[1].run(upstreamBuf)
	r.halves[0].run(clientBuf)
	r.wg.Wait()

	for _, c := range r.conns {
		c.Close()
	}
	return r.halves[0].n, r.halves[1].n, r.err
}

var connNames = [2]string{"client", "upstream"}

// relaySession is the state the two directions share.
type relaySession struct {
	conns     [2]net.Conn // client, upstream
	linger    time.Duration
	idle      time.Duration // 0: no idle timeout
	refresh   time.Duration // how often a direction moves its idle deadline
	start     time.Time     // times below are offsets from it (monotonic)
	lingering atomic.Bool   // one direction has ended; the other must keep moving
	wg        sync.WaitGroup
	halves    [2]relayHalf

	mu       sync.Mutex // protects closedBy, eof, aborted, err
	closedBy [2]bool    // conns[i] was closed by Relay, so errors reading it are expected
	eof      [2]bool    // conns[i] said EOF, so its peer may be gone
	aborted  bool       // both conns were closed on an error
	err      error      // the error that aborted the session
}

// relayHalf is one direction, conns[src] to conns[dst].
type relayHalf struct {
	r        *relaySession
	src, dst int
	n        int64               // bytes written to conns[dst]
	wait     [relayWaitSize]byte // what an idle direction reads into
	big      *[relayBufSize]byte // pooled, held only while data flows
	carry    int                 // bytes read into wait just before switching to big
	last     atomic.Int64        // idle timeout: when this direction last read data (offset from start)
	armed    time.Duration       // idle timeout: when the read deadline was last set (offset); 0: never
}

// run forwards br's buffered bytes, then copies until the source ends.
// The upstream direction runs it on its own goroutine.
func (h *relayHalf) run(br *bufio.Reader) {
	if h.src == 1 {
		defer h.r.wg.Done()
	}
	err := h.pump(br)
	if h.big != nil {
		relayBufs.Put(h.big)
		h.big = nil
	}
	h.finish(err)
}

// pump does the copying. A panic (a buggy net.Conn wrapper) ends the
// session like an error rather than the whole process.
func (h *relayHalf) pump(br *bufio.Reader) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &relayError{err: fmt.Errorf("panic: %v\n%s", p, debug.Stack())}
		}
	}()
	if err := h.flush(br); err != nil {
		return err
	}
	return h.copy()
}

// relayError is a failed read or write, before the session decides whether
// it matters.
type relayError struct {
	write bool
	err   error
}

func (e *relayError) Error() string { return e.err.Error() }

// flush writes what br already holds, without copying it.
func (h *relayHalf) flush(br *bufio.Reader) error {
	if br == nil {
		return nil
	}
	dst := h.r.conns[h.dst]
	for br.Buffered() > 0 {
		b, _ := br.Peek(br.Buffered())
		n, err := dst.Write(b)
		h.n += int64(n)
		br.Discard(n)
		if err != nil {
			return &relayError{write: true, err: err}
		}
	}
	return nil
}

// copy moves data until the source reports EOF (nil) or an error.
//
// Reads go into h.wait until one fills it, which says data is streaming;
// then into a pooled buffer for as long as each read fills it or brings a
// full TLS record (a *tls.Conn returns at most one record per Read). The
// first read that does neither puts the pooled buffer back, so a direction
// that falls idle waits on its own 2 KiB only. Every chunk is written before
// the next read: the data is never held back waiting for more.
func (h *relayHalf) copy() error {
	r := h.r
	src, dst := r.conns[h.src], r.conns[h.dst]
	for {
		b := h.wait[:]
		if h.big != nil {
			b = h.big[:]
		}
		if r.lingering.Load() {
			src.SetReadDeadline(time.Now().Add(r.linger))
		} else if r.idle > 0 {
			h.armIdle(src)
		}
		n, rerr := src.Read(b)
		if n > 0 {
			if r.idle > 0 {
				h.last.Store(int64(time.Since(r.start)))
			}
			if r.lingering.Load() {
				dst.SetWriteDeadline(time.Now().Add(r.linger))
			}
			w, werr := dst.Write(b[:n])
			h.n += int64(w)
			if werr == nil && w < n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return &relayError{write: true, err: werr}
			}
			h.adapt(n)
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			if r.idle > 0 && !r.lingering.Load() && isTimeout(rerr) {
				if h.stillActive(src) {
					continue
				}
				return &relayError{err: ErrIdleTimeout}
			}
			return &relayError{err: rerr}
		}
	}
}

// armIdle pushes the read deadline of src to idle after now, unless it did
// so less than r.refresh ago. It runs before every read, so it must stay
// cheap: one monotonic clock reading, and a deadline update once a second.
func (h *relayHalf) armIdle(src net.Conn) {
	r := h.r
	now := time.Since(r.start)
	if h.armed != 0 && now-h.armed < r.refresh {
		return
	}
	h.armed = max(now, 1)
	src.SetReadDeadline(r.start.Add(now + r.idle))
}

// stillActive is called when src's idle deadline passed. If either
// direction read data within the idle timeout it moves the deadline to idle
// after that and reports true.
func (h *relayHalf) stillActive(src net.Conn) bool {
	r := h.r
	now := time.Since(r.start)
	last := time.Duration(max(r.halves[0].last.Load(), r.halves[1].last.Load()))
	if now-last >= r.idle {
		return false
	}
	h.armed = max(now, 1)
	src.SetReadDeadline(r.start.Add(last + r.idle))
	return true
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// adapt picks the buffer for the next read after a read of n bytes.
func (h *relayHalf) adapt(n int) {
	if h.big == nil {
		if n == len(h.wait) {
			h.big = relayBufs.Get().(*[relayBufSize]byte)
			h.carry = n
		}
		return
	}
	streaming := n == len(h.big) || n+h.carry == tlsMaxRecord
	h.carry = 0
	if !streaming {
		relayBufs.Put(h.big)
		h.big = nil
	}
}

// finish ends this direction: half-close after EOF, abort after an error.
func (h *relayHalf) finish(err error) {
	r := h.r
	if err == nil {
		r.mu.Lock()
		r.eof[h.src] = true
		r.mu.Unlock()
		r.halfClose(h.dst)
		r.startLinger(&r.halves[1-h.src])
		return
	}
	re := err.(*relayError)
	r.mu.Lock()
	// Not news: errors caused by our own closing, and a peer that already
	// said EOF resetting when we write to it (a client that sends LOGOUT
	// and closes without waiting for the answer).
	expected := r.aborted ||
		(!re.write && r.closedBy[h.src]) ||
		(re.write && r.eof[h.dst])
	if !expected {
		if re.write {
			r.err = fmt.Errorf("write to %s: %w", connNames[h.dst], re.err)
		} else {
			r.err = fmt.Errorf("read from %s: %w", connNames[h.src], re.err)
		}
	}
	wasAborted := r.aborted
	r.aborted = true
	r.closedBy = [2]bool{true, true}
	r.mu.Unlock()
	if !wasAborted {
		hardClose(r.conns[0])
		hardClose(r.conns[1])
	}
}

type closeWriter interface{ CloseWrite() error }

// halfClose tells conns[i]'s peer that no more data is coming, closing the
// connection outright when it cannot be half-closed.
func (r *relaySession) halfClose(i int) {
	c := r.conns[i]
	if cw, ok := c.(closeWriter); ok && cw.CloseWrite() == nil {
		return
	}
	r.mu.Lock()
	r.closedBy[i] = true
	r.mu.Unlock()
	c.Close()
}

// startLinger makes the other direction keep moving: from now on each of
// its reads and writes must complete within r.linger.
func (r *relaySession) startLinger(other *relayHalf) {
	r.lingering.Store(true)
	t := time.Now().Add(r.linger)
	r.conns[other.src].SetReadDeadline(t)
	r.conns[other.dst].SetWriteDeadline(t)
}

// hardClose closes c without a TLS close_notify: after an error nobody is
// listening for one, and sending it could block on a peer that stopped
// reading.
func hardClose(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		tc.NetConn().Close()
	}
	c.Close()
}
