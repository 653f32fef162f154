package fake365

import (
	"crypto/tls"
	"net"
	"sync/atomic"
)

// Record sizes. Real servers choose how much plaintext each TLS record
// carries: Go's crypto/tls fills records up to 16 KiB once a connection is
// past its first 128 KiB, Dovecot 2.3 (OpenSSL behind its own 4 KiB output
// buffer) writes 4 KiB records. A relay reading a *tls.Conn gets at most
// one record per Read, so the record size decides how many pieces a
// streamed response arrives in; the fake lets tests and the bench choose it.
const (
	// MaxRecordSize is the largest plaintext a TLS record carries.
	MaxRecordSize = 16 << 10
)

// recordListener is a TLS listener whose connections write records of at
// most size bytes of plaintext (0: crypto/tls's own choice).
type recordListener struct {
	net.Listener
	cfg   *tls.Config // as given: dynamic record sizing on
	fixed *tls.Config // cfg with DynamicRecordSizingDisabled
	size  atomic.Int64
}

func newRecordListener(ln net.Listener, cfg *tls.Config) *recordListener {
	fixed := cfg.Clone()
	// Without this, crypto/tls starts every connection with records that
	// fit one TCP segment and grows them, so the first 128 KiB would not
	// have the chosen size.
	fixed.DynamicRecordSizingDisabled = true
	return &recordListener{Listener: ln, cfg: cfg, fixed: fixed}
}

// setSize sets the record size of connections accepted from now on; n <= 0
// or n >= MaxRecordSize turn the splitting off (n >= MaxRecordSize still
// disables dynamic record sizing, so every record is full size).
func (l *recordListener) setSize(n int) { l.size.Store(int64(n)) }

func (l *recordListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	n := int(l.size.Load())
	if n <= 0 {
		return tls.Server(c, l.cfg), nil
	}
	tc := tls.Server(c, l.fixed)
	if n >= MaxRecordSize {
		return tc, nil
	}
	return &recordConn{Conn: tc, size: n}, nil
}

// recordConn hands its *tls.Conn at most size bytes per Write. crypto/tls
// turns each Write into records of at most 16 KiB (with dynamic record
// sizing off) and writes each record to the socket at once, so every piece
// is one record of exactly size bytes, the last one of a Write excepted.
type recordConn struct {
	*tls.Conn
	size int
}

func (c *recordConn) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		k := min(len(b), c.size)
		m, err := c.Conn.Write(b[:k])
		n += m
		if err != nil {
			return n, err
		}
		b = b[k:]
	}
	return n, nil
}
