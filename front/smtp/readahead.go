package smtp

import (
	"sync"
	"sync/atomic"
)

// Read-ahead under message data. go-smtp reads the connection through a
// 4 KiB bufio.Reader, so a message streamed at full speed costs one
// read(2) per 4 KiB. While a message streams, conn.Read fills a larger
// pooled buffer from the socket and serves go-smtp's reads from it.
//
// It is on only while Session.Data runs and the last read from the socket
// filled what it was asked for (data is waiting): a session between
// commands reads straight into go-smtp's buffer and holds no buffer of
// its own, and a buffer goes back to the pool as soon as it is drained.
// Bytes are handed on in the order they arrived, whoever reads them: after
// STARTTLS, what a client sent in clear behind the command goes into the
// TLS handshake (and fails it), never to go-smtp as a command.
const readAheadSize = 64 << 10

var readAheadPool = sync.Pool{New: func() any {
	b := make([]byte, readAheadSize)
	return &b
}}

// readAhead is a connection's read-ahead state. Only the goroutine reading
// the connection uses buf, r, w, err and full; data is set by the
// session's Data, which may run on another goroutine (BDAT).
type readAhead struct {
	data atomic.Bool // Session.Data runs
	buf  *[]byte     // nil unless it holds bytes not yet handed on
	r, w int         // (*buf)[r:w] is what it holds
	err  error       // the socket's error after the bytes held
	full bool        // the last socket read filled what it was asked for
	held atomic.Bool // buf is not nil, for tests from another goroutine
}

// streaming tells the connection whether message data is being read.
func (c *conn) streaming(on bool) { c.ra.data.Store(on) }

// readConn reads from the socket, or from the read-ahead buffer.
func (c *conn) readConn(p []byte) (int, error) {
	ra := &c.ra
	if ra.buf != nil {
		n := copy(p, (*ra.buf)[ra.r:ra.w])
		if ra.r += n; ra.r == ra.w {
			readAheadPool.Put(ra.buf)
			ra.buf = nil
			ra.held.Store(false)
		}
		return n, nil
	}
	if err := ra.err; err != nil {
		ra.err = nil
		return 0, err
	}
	if !ra.full || len(p) >= readAheadSize || !ra.data.Load() {
		n, err := c.readSocket(p)
		ra.full = n == len(p)
		return n, err
	}
	buf := readAheadPool.Get().(*[]byte)
	m, err := c.readSocket(*buf)
	ra.full = m >= len(p)
	n := copy(p, (*buf)[:m])
	if n == m {
		readAheadPool.Put(buf)
		return n, err
	}
	ra.buf, ra.r, ra.w, ra.err = buf, n, m, err
	ra.held.Store(true)
	return n, nil
}

// readSocket is one read from the socket, marked as waiting for the
// client (closeIfIdle).
func (c *conn) readSocket(p []byte) (int, error) {
	c.reading.Store(true)
	n, err := c.Conn.Read(p)
	c.reading.Store(false)
	return n, err
}
