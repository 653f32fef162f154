//go:build unix

package relay

import "syscall"

// initRaw finds the descriptor of the connection under TLS.
func (u *underConn) initRaw() {
	sc, ok := u.Conn.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	f := &fdReader{rc: rc}
	// Made once: a closure per read would be an allocation per read.
	f.read = func(fd uintptr) bool {
		for {
			f.n, f.err = syscall.Read(int(fd), f.buf)
			if f.err != syscall.EINTR {
				return true // never wait: gatherTLS asks what is there now
			}
		}
	}
	u.raw = f
}

// fdReader reads a socket with one read(2), which does not wait: Go puts
// every network descriptor in non-blocking mode. Only the goroutine
// reading the connection uses it.
type fdReader struct {
	rc   syscall.RawConn
	read func(fd uintptr) bool
	buf  []byte
	n    int
	err  error
}

func (f *fdReader) readNow(b []byte) (int, error) {
	f.buf = b
	err := f.rc.Read(f.read)
	f.buf = nil
	n, rerr := f.n, f.err
	if err != nil || rerr != nil || n <= 0 {
		// Nothing there (EAGAIN), a read deadline that has passed, the end
		// of the stream or an error: the blocking Read that follows
		// reports whatever it is, the way it always does.
		return 0, errWouldBlock
	}
	return n, nil
}
