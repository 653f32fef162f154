package relay

import (
	"errors"
	"net"
	"sync"
)

// Why a connection under TLS. A *tls.Conn returns at most one record per
// Read, and servers choose their record size: Dovecot writes 4 KiB
// records, so a relay that wrote each Read on at once would make a write,
// and a wake-up of the client, per 4 KiB. To gather many records into one
// write, the relay must know, after each Read, whether the next one would
// return at once. crypto/tls does not say, but what it reads comes from
// the connection it runs over; UnderTLS is that connection. While the
// relay gathers (see gatherTLS) it makes Read non-blocking: what the
// kernel already holds is read in one system call into a pooled buffer,
// and when nothing is there Read returns errWouldBlock, a timeout, which
// crypto/tls passes on without breaking the connection, as it does for a
// read deadline (net/http relies on the same to abort background reads of
// TLS connections). In the normal, blocking mode Read reads straight into
// the caller's buffer, so a connection that waits holds no buffer of ours.
//
// Writes can be gathered too: the relay holds the writes crypto/tls makes
// for one Write of its own (a record per 16 KiB) and sends them in one
// system call.

// underBufSize is the read-ahead buffer, taken from a pool while it holds
// bytes: what one non-blocking read may bring.
const underBufSize = 64 << 10

// underWriteSize is the write buffer: a relay chunk (relayBufSize) in 16
// KiB records, with their headers and tags, fits.
const underWriteSize = relayBufSize + 4<<10

var (
	underBufs  = sync.Pool{New: func() any { return new([underBufSize]byte) }}
	underWBufs = sync.Pool{New: func() any { return new([underWriteSize]byte) }}
)

// errWouldBlock is what a non-blocking Read returns when there is nothing
// to read: a timeout, so that crypto/tls keeps the connection usable.
var errWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "relay: read would block" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

var _ net.Error = wouldBlock{}

// UnderTLS wraps raw, a connection that a *tls.Conn is about to run over
// (tls.Client(relay.UnderTLS(raw), cfg)), so that Relay can gather the
// records it reads from that *tls.Conn into large writes and send what it
// writes to it in few system calls. Everything else passes through to raw;
// raw should be a *net.TCPConn or another connection with SyscallConn,
// otherwise only what crypto/tls has already buffered is gathered.
func UnderTLS(raw net.Conn) net.Conn {
	u := &underConn{Conn: raw}
	u.initRaw()
	return u
}

// UnderTLSListener returns ln with every accepted connection wrapped by
// UnderTLS, for a server's tls.NewListener(relay.UnderTLSListener(ln), cfg):
// the relay then gathers what TLS clients send and sends what it relays
// to them in few system calls.
func UnderTLSListener(ln net.Listener) net.Listener { return underListener{ln} }

type underListener struct{ net.Listener }

func (l underListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return UnderTLS(c), nil
}

// CloseWrite half-closes raw when it can.
func (u *underConn) CloseWrite() error {
	if cw, ok := u.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("relay: the connection under TLS cannot half-close")
}

// underConn is the connection UnderTLS returns.
type underConn struct {
	net.Conn
	raw rawReader // nil: raw cannot be read without blocking

	// Read side: used only by the goroutine reading the *tls.Conn above
	// (the relay's upstream direction, or whoever reads before it).
	nonblock bool                // Read must not block: gatherTLS is asking
	buf      *[underBufSize]byte // pooled; nil while empty
	r, w     int                 // buf[r:w] is read ahead and not yet handed on

	wmu  sync.Mutex            // protects hold, wbuf, wn: crypto/tls writes from the relay and, for alerts, other goroutines
	hold bool                  // gather writes until flush
	wbuf *[underWriteSize]byte // pooled; nil unless holding bytes
	wn   int
}

// Read hands on read-ahead bytes first. Otherwise, when blocking, it reads
// raw into b; when not, it reads what the kernel holds into the read-ahead
// buffer, or returns errWouldBlock.
func (u *underConn) Read(b []byte) (int, error) {
	if u.r < u.w {
		return u.handOut(b), nil
	}
	if !u.nonblock {
		return u.Conn.Read(b)
	}
	if u.raw == nil {
		return 0, errWouldBlock
	}
	if u.buf == nil {
		u.buf = underBufs.Get().(*[underBufSize]byte)
	}
	n, err := u.raw.readNow(u.buf[:])
	if n <= 0 {
		underBufs.Put(u.buf)
		u.buf = nil
		return 0, err
	}
	u.r, u.w = 0, n
	return u.handOut(b), nil
}

// handOut copies read-ahead bytes to b and gives the buffer back to the
// pool once it is empty.
func (u *underConn) handOut(b []byte) int {
	n := copy(b, u.buf[u.r:u.w])
	u.r += n
	if u.r == u.w {
		underBufs.Put(u.buf)
		u.buf, u.r, u.w = nil, 0, 0
	}
	return n
}

// Write writes b to raw, or appends it to the held writes.
func (u *underConn) Write(b []byte) (int, error) {
	u.wmu.Lock()
	defer u.wmu.Unlock()
	if !u.hold {
		return u.Conn.Write(b)
	}
	if u.wbuf == nil {
		u.wbuf = underWBufs.Get().(*[underWriteSize]byte)
	}
	if u.wn+len(b) > len(u.wbuf) {
		if err := u.flushLocked(); err != nil {
			return 0, err
		}
		if len(b) > len(u.wbuf) {
			return u.Conn.Write(b)
		}
		if u.wbuf == nil {
			u.wbuf = underWBufs.Get().(*[underWriteSize]byte)
		}
	}
	u.wn += copy(u.wbuf[u.wn:], b)
	return len(b), nil
}

// holdWrites makes Write gather until flush.
func (u *underConn) holdWrites() {
	u.wmu.Lock()
	u.hold = true
	u.wmu.Unlock()
}

// flush writes what was gathered and ends holding.
func (u *underConn) flush() error {
	u.wmu.Lock()
	defer u.wmu.Unlock()
	u.hold = false
	return u.flushLocked()
}

func (u *underConn) flushLocked() error {
	if u.wbuf == nil {
		return nil
	}
	var err error
	if u.wn > 0 {
		var n int
		n, err = u.Conn.Write(u.wbuf[:u.wn])
		if err == nil && n < u.wn {
			err = errors.New("relay: short write under TLS")
		}
	}
	underWBufs.Put(u.wbuf)
	u.wbuf, u.wn = nil, 0
	return err
}

// rawReader reads what the kernel holds without waiting.
type rawReader interface {
	// readNow returns what was read, or 0 and errWouldBlock when it
	// found nothing to read or anything else a blocking read would report.
	readNow(b []byte) (int, error)
}
