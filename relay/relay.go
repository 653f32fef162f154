package relay

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
	// relayBufSize is the size of the pooled copy buffers: the most one
	// write to the destination carries.
	relayBufSize = 64 << 10
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
	// goodbyeLinger is how long a client has, after the goodbye line and
	// the end of our stream, to hang up before the relay closes its
	// connection: closing with its unread bytes pending would make the
	// kernel send a reset, which may destroy the line before it is read.
	goodbyeLinger = time.Second
	// pokeDeadline is the read deadline that wakes a blocked Read.
	pokeDeadline = -time.Millisecond
)

// ErrIdleTimeout is wrapped by the error of a session that RelayOptions.Idle ended
// because neither direction moved a byte for the idle timeout.
var ErrIdleTimeout = errors.New("relay: idle timeout")

// ErrSaidGoodbye is the error of a session that RelayWith ended after
// writing the line given to Goodbye.Say.
var ErrSaidGoodbye = errors.New("relay: ended with a goodbye line")

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
//
// o adds an idle limit (err then wraps ErrIdleTimeout) and a Goodbye with
// its SafePoint (err is then ErrSaidGoodbye once its line is written and
// both connections are closed); the zero RelayOptions adds neither.
func Relay(client net.Conn, clientBuf *bufio.Reader, upstream net.Conn, upstreamBuf *bufio.Reader, o RelayOptions) (toUpstream, toClient int64, err error) {
	return relayWith(client, clientBuf, upstream, upstreamBuf, halfCloseIdle, o)
}

// RelayOptions are the optional parts of a relay session.
type RelayOptions struct {
	// Idle ends the session when neither direction has moved a byte for
	// this long; 0 or less: never. Only silence in both directions
	// counts: a client in IMAP IDLE that hears from the upstream now and
	// then is not idle. To stay cheap on the hot path each direction
	// pushes its read deadline forward at most once a second, and a
	// deadline that fires while the other direction moved data recently
	// is pushed forward instead of ending the session.
	Idle time.Duration
	// Goodbye, when not nil, lets another goroutine end the session with
	// a last line to the client (Goodbye.Say).
	Goodbye *Goodbye
	// SafePoint, with a Goodbye, follows both streams and says where the
	// goodbye line may be written; nil: after any chunk.
	SafePoint SafePoint
}

// relayWith is Relay with the half-close idle limit as a parameter, for
// tests.
func relayWith(client net.Conn, clientBuf *bufio.Reader, upstream net.Conn, upstreamBuf *bufio.Reader, linger time.Duration, o RelayOptions) (toUpstream, toClient int64, err error) {
	r := &relaySession{linger: linger, idle: max(o.Idle, 0), start: time.Now()}
	r.refresh = min(idleRefresh, r.idle/4)
	r.conns = [2]net.Conn{client, upstream}
	r.halves[0] = relayHalf{r: r, src: 0, dst: 1}
	r.halves[1] = relayHalf{r: r, src: 1, dst: 0}
	for _, c := range r.conns {
		c.SetDeadline(time.Time{})
	}
	// After the deadlines are cleared, so that a Say from now on wakes
	// the upstream read.
	if g := o.Goodbye; g != nil {
		r.bye = g
		r.safe = o.SafePoint
		r.stream, _ = o.SafePoint.(Streamer)
		g.mu.Lock()
		g.r = r
		asked := g.line != nil
		g.mu.Unlock()
		if asked {
			r.byeAsked.Store(true)
		}
		defer func() {
			g.mu.Lock()
			g.r = nil
			g.mu.Unlock()
		}()
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
	bye       *Goodbye      // nil: none
	safe      SafePoint     // with bye: where its line may go; nil: anywhere
	stream    Streamer      // safe, when it is also a Streamer; nil: none
	byeAsked  atomic.Bool   // bye.Say was called
	ending    atomic.Bool   // the goodbye was said; implies lingering
	endBy     time.Time     // set before ending: when the client direction gives up
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
	byeSeen  bool                // the goodbye request was noticed and the read deadline restored
	fed      int                 // bytes of the chunk being gathered already given to the SafePoint
	holding  bool                // gatherTLS set the streamHold deadline for this chunk
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
	if err == errGoodbye {
		h.r.endGoodbye()
		return
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

// errGoodbye ends the upstream direction once it has written the goodbye
// line.
var errGoodbye = errors.New("goodbye written")

// flush writes what br already holds, without copying it.
func (h *relayHalf) flush(br *bufio.Reader) error {
	if br == nil {
		return nil
	}
	dst := h.r.conns[h.dst]
	for br.Buffered() > 0 {
		b, _ := br.Peek(br.Buffered())
		h.follow(b)
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
	srcUnder, dstUnder := underOf(src), underOf(dst)
	for {
		if err := h.beforeRead(src); err != nil {
			return err
		}
		b := h.wait[:]
		if h.big != nil {
			b = h.big[:]
		}
		n, rerr := src.Read(b)
		gathered := false
		if n > 0 && rerr == nil && srcUnder != nil {
			b, n, rerr = h.gatherTLS(src, srcUnder, b, n)
			gathered = true
			if h.holding {
				h.endHold(src)
			}
		}
		if n > 0 {
			if err := h.forward(dst, dstUnder, b[:n]); err != nil {
				return err
			}
			if gathered {
				h.adaptGathered(n)
			} else {
				h.adapt(n)
			}
		}
		if rerr != nil {
			if again, err := h.readFailed(src, rerr); !again {
				return err
			}
		}
	}
}

// beforeRead runs before every read: it arms the read deadline when the
// session lingers or has an idle timeout, and in the upstream direction,
// once a goodbye was asked for, writes it if the SafePoint allows (the
// error is then errGoodbye) or else restores the deadline Say poked.
func (h *relayHalf) beforeRead(src net.Conn) error {
	r := h.r
	if r.lingering.Load() || r.idle > 0 {
		h.armRead(src)
	}
	// After setting the deadline: see Goodbye.Say.
	if h.src != 1 || !r.byeAsked.Load() {
		return nil
	}
	if r.safe == nil || r.safe.Safe() {
		return h.sayGoodbye()
	}
	if !h.byeSeen {
		h.byeSeen = true
		h.unpoke(src)
	}
	return nil
}

// forward writes b, just read, to dst: it notes the activity for the idle
// timeout, bounds the write while lingering and shows b to the SafePoint
// first, so that the answer to what the client sent cannot come back
// before it was followed.
func (h *relayHalf) forward(dst net.Conn, u *underConn, b []byte) error {
	r := h.r
	if r.idle > 0 {
		h.last.Store(int64(time.Since(r.start)))
	}
	if r.lingering.Load() {
		dst.SetWriteDeadline(time.Now().Add(r.linger))
	}
	h.follow(b[h.fed:])
	h.fed = 0
	w, err := h.write(dst, u, b)
	h.n += int64(w)
	if err == nil && w < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return &relayError{write: true, err: err}
	}
	return nil
}

// readFailed says what the read error rerr means: again is true when the
// direction reads on (a deadline that was a wake-up or that the other
// direction's traffic extends); otherwise err ends the direction, nil at
// EOF.
func (h *relayHalf) readFailed(src net.Conn, rerr error) (again bool, err error) {
	r := h.r
	switch {
	case rerr == io.EOF:
		return false, nil
	case !isTimeout(rerr):
	case h.src == 1 && r.byeAsked.Load():
		// Most likely the wake-up of Say; at worst an idle or linger
		// deadline, pushed forward by unpoke: the caller bounds a
		// shutdown.
		h.byeSeen = false
		return true, nil
	case r.idle > 0 && !r.lingering.Load():
		if h.stillActive(src) {
			return true, nil
		}
		return false, &relayError{err: ErrIdleTimeout}
	}
	return false, &relayError{err: rerr}
}

// armRead sets the read deadline of src before a read when the session is
// lingering or has an idle timeout.
func (h *relayHalf) armRead(src net.Conn) {
	r := h.r
	// Lingering is checked again after armIdle moved the deadline, so that
	// a startLinger or endGoodbye that ran meanwhile is not undone.
	if !r.lingering.Load() && (!h.armIdle(src) || !r.lingering.Load()) {
		return
	}
	if r.ending.Load() {
		src.SetReadDeadline(r.endBy)
		return
	}
	src.SetReadDeadline(time.Now().Add(r.linger))
}

// armIdle pushes the read deadline of src to idle after now, unless it did
// so less than r.refresh ago, and reports whether it did. It runs before
// every read, so it must stay cheap: one monotonic clock reading, and a
// deadline update once a second.
func (h *relayHalf) armIdle(src net.Conn) bool {
	r := h.r
	if r.idle <= 0 {
		return false
	}
	now := time.Since(r.start)
	if h.armed != 0 && now-h.armed < r.refresh {
		return false
	}
	h.armed = max(now, 1)
	src.SetReadDeadline(r.start.Add(now + r.idle))
	return true
}

// follow passes b, about to be written, to the SafePoint, if any. A write
// that fails ends the direction, so the bytes are as good as written.
func (h *relayHalf) follow(b []byte) {
	switch {
	case h.r.safe == nil:
	case h.src == 1:
		h.r.safe.FromUpstream(b)
	default:
		h.r.safe.FromClient(b)
	}
}

// unpoke replaces the past read deadline that Goodbye.Say set with the one
// the direction would have had.
func (h *relayHalf) unpoke(src net.Conn) {
	r := h.r
	h.armed = 0
	if r.lingering.Load() || r.idle > 0 {
		h.armRead(src)
		return
	}
	src.SetReadDeadline(time.Time{})
}

// sayGoodbye writes the goodbye line to the client. The relayed bytes do not
// count it.
func (h *relayHalf) sayGoodbye() error {
	dst := h.r.conns[h.dst]
	line := h.r.bye.text()
	if h.r.lingering.Load() {
		dst.SetWriteDeadline(time.Now().Add(h.r.linger))
	}
	if _, err := dst.Write(line); err != nil {
		return &relayError{write: true, err: err}
	}
	return errGoodbye
}

// endGoodbye ends the session after the goodbye line: the upstream is
// closed, the client's stream ends after the line, and the client
// direction has a moment to see the client hang up. What fails from now on
// is not news.
func (r *relaySession) endGoodbye() {
	r.mu.Lock()
	wasAborted := r.aborted
	if !wasAborted {
		r.err = ErrSaidGoodbye
	}
	r.aborted = true
	r.closedBy = [2]bool{true, true}
	r.mu.Unlock()
	if wasAborted {
		return // the other direction failed meanwhile and closed both
	}
	hardClose(r.conns[1])
	client := r.conns[0]
	if cw, ok := client.(closeWriter); !ok || cw.CloseWrite() != nil {
		client.Close()
		return
	}
	// The client direction now reads only until the client hangs up or
	// goodbyeLinger passes (armRead); what it reads cannot go anywhere.
	r.endBy = time.Now().Add(goodbyeLinger)
	r.ending.Store(true)
	r.lingering.Store(true)
	client.SetReadDeadline(r.endBy)
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
		if h.src == 1 && r.byeAsked.Load() {
			r.closeAfterUpstreamEOF()
		}
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
