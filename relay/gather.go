package relay

import (
	"crypto/tls"
	"errors"
	"net"
	"time"
)

// Gathering: what the upstream direction does to turn small TLS records
// into large writes (see UnderTLS), and to write what it relays to a TLS
// peer in few system calls.

// write writes b to dst; through a *tls.Conn over UnderTLS, the records
// it makes go out in one system call.
func (h *relayHalf) write(dst net.Conn, u *underConn, b []byte) (int, error) {
	if u == nil {
		return dst.Write(b)
	}
	u.holdWrites()
	n, err := dst.Write(b)
	if ferr := u.flush(); err == nil {
		err = ferr
	}
	return n, err
}

// underOf returns the UnderTLS connection under c, or nil.
func underOf(c net.Conn) *underConn {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil
	}
	u, _ := tc.NetConn().(*underConn)
	return u
}

// gatherTLS goes on reading src, a *tls.Conn over u, without waiting,
// after a Read brought n bytes into b: records crypto/tls has buffered,
// then what the kernel holds. It moves to the pooled buffer once the wait
// buffer is full, and stops when nothing more is at hand or the pooled
// buffer has no room for another full record. A lone line thus goes out at
// once, and a stream goes out in writes of 48 to 64 KiB.
func (h *relayHalf) gatherTLS(src net.Conn, u *underConn, b []byte, n int) ([]byte, int, error) {
	// A short read into the wait buffer that ends a line is a response
	// that fit what crypto/tls had (it returns less than asked only when
	// it has no more plaintext at hand): send it without the system call
	// that would look for more. Streams fill the wait buffer and go on.
	if h.big == nil && n < len(b) && b[n-1] == '\n' {
		return b, n, nil
	}
	for {
		if h.big == nil && n == len(b) {
			h.big = relayBufs.Get().(*[relayBufSize]byte)
			copy(h.big[:], b[:n])
			b = h.big[:]
		}
		if h.big != nil && len(b)-n < tlsMaxRecord {
			return b, n, nil
		}
		u.nonblock = true
		m, err := src.Read(b[n:])
		u.nonblock = false
		n += m
		if errors.Is(err, errWouldBlock) {
			if !h.streaming(b[:n]) {
				return b, n, nil
			}
			m, err = h.hold(src, b[n:])
			n += m
			if err != nil && isTimeout(err) {
				return b, n, nil // the hold ran out: write what there is
			}
		}
		if err != nil || m == 0 {
			return b, n, err
		}
	}
}

// streamHold bounds how long gathering waits for the next record of a
// message whose end is still to come (Streamer). Records of a stream
// arrive microseconds apart; this is only reached when the upstream
// pauses mid-message, or when Pending was wrong.
const streamHold = 2 * time.Millisecond

// streaming reports whether the upstream is mid-message with more to come
// after b (the chunk gathered so far), per the session's Streamer. It
// gives b's new bytes to the SafePoint first; forward passes on only the
// rest.
func (h *relayHalf) streaming(b []byte) bool {
	st := h.r.stream
	if st == nil || h.src != 1 {
		return false
	}
	h.follow(b[h.fed:])
	h.fed = len(b)
	return st.Pending() > 0
}

// hold reads src, waiting for the next record of a stream. The first
// hold of a chunk sets a read deadline streamHold ahead, so that a chunk
// waits for at most that in all; endHold puts the deadline back.
func (h *relayHalf) hold(src net.Conn, b []byte) (int, error) {
	if !h.holding {
		h.holding = true
		src.SetReadDeadline(time.Now().Add(streamHold))
	}
	return src.Read(b)
}

// endHold puts back the read deadline hold set, the way beforeRead would
// arm it: cleared, or re-armed on the next read (h.armed = 0) for an idle
// timeout or a linger. A Goodbye.Say in the meantime is seen by
// beforeRead through byeAsked.
func (h *relayHalf) endHold(src net.Conn) {
	r := h.r
	h.holding = false
	h.armed = 0
	if !r.lingering.Load() && r.idle <= 0 {
		src.SetReadDeadline(time.Time{})
	}
}

// adaptGathered picks the buffer for the next read after gatherTLS
// brought n bytes: the pooled one while data keeps coming faster than it
// is written (the gathering stopped for want of room), the wait buffer
// otherwise.
func (h *relayHalf) adaptGathered(n int) {
	if h.big != nil && relayBufSize-n < tlsMaxRecord {
		return
	}
	if h.big != nil {
		relayBufs.Put(h.big)
		h.big = nil
	}
	h.carry = 0
}
