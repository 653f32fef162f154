//go:build linux

package pop3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// gateConn is the proxy's end of a client connection. Once armed, its
// first Write waits until the test opens the gate, and it notes the size
// of every Write.
type gateConn struct {
	*net.TCPConn
	gate chan struct{}

	mu     sync.Mutex // protects armed, sizes
	armed  bool
	sizes  []int
	waited bool
}

func (c *gateConn) arm() {
	c.mu.Lock()
	c.armed = true
	c.mu.Unlock()
}

func (c *gateConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	armed, wait := c.armed, c.armed && !c.waited
	if armed {
		c.sizes = append(c.sizes, len(b))
		c.waited = true
	}
	c.mu.Unlock()
	if wait {
		<-c.gate
	}
	return c.TCPConn.Write(b)
}

func (c *gateConn) writes() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]int(nil), c.sizes...)
}

type gateListener struct {
	net.Listener
	conns chan *gateConn
}

func (l gateListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	gc := &gateConn{TCPConn: c.(*net.TCPConn), gate: make(chan struct{})}
	l.conns <- gc
	return gc, nil
}

// inQueue is how many bytes the kernel holds unread for c.
func inQueue(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatalf("SyscallConn() = %v", err)
	}
	var n int
	var ierr error
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil || ierr != nil {
		t.Fatalf("SIOCINQ = %v, %v", err, ierr)
	}
	return n
}

// A relayed POP3 session's upstream runs over relay.UnderTLS, like the
// IMAP front's: a RETR that the upstream sends in TLS records (at most
// 16 KiB of plaintext each) reaches the client in writes that gather
// several records, not one write per record.
// The client's first write of the answer is held until the kernel holds
// 24 KiB of the upstream's records (more than one 16 KiB record), so that
// there is something to gather.
func TestRelayGathersUpstreamRecords(t *testing.T) {
	ups := make(chan *net.TCPConn, 4)
	e := newEnv(t, withServer(func(s *Server) {
		s.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if err == nil {
				ups <- c.(*net.TCPConn)
			}
			return c, err
		}
	}))
	var msg bytes.Buffer
	msg.WriteString("Subject: big\r\n\r\n")
	for i := 0; msg.Len() < 100<<10; i++ {
		fmt.Fprintf(&msg, "line %05d of a message that is relayed in small TLS records\r\n", i)
	}
	e.seed(alice, msg.Bytes())

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen() = %v", err)
	}
	gl := gateListener{Listener: ln, conns: make(chan *gateConn, 4)}
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(gl) }()
	t.Cleanup(func() {
		e.srv.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve() = %v, want %v", err, ErrServerClosed)
		}
	})

	c := greet(t, ln.Addr().String())
	c.login(alice, alicePass)
	gc := <-gl.conns
	var up *net.TCPConn
	select {
	case up = <-ups:
	default:
		t.Fatal("login did not dial the upstream through Server.Dial")
	}
	gc.arm()
	var open sync.Once
	t.Cleanup(func() { open.Do(func() { close(gc.gate) }) })
	c.send("RETR 1\r\n")
	deadline := time.Now().Add(testTimeout)
	for inQueue(t, up) < 24<<10 {
		if time.Now().After(deadline) {
			t.Fatalf("the upstream's answer did not reach the proxy's socket: %d bytes queued", inQueue(t, up))
		}
		time.Sleep(time.Millisecond) // polling the kernel's queue, not waiting for an event
	}
	open.Do(func() { close(gc.gate) })
	if got := c.expect("+OK"); got == "" {
		t.Fatal("RETR: empty reply")
	}
	var got bytes.Buffer
	for _, l := range c.multi() {
		got.WriteString(l + "\r\n")
	}
	if !bytes.Equal(got.Bytes(), msg.Bytes()) {
		t.Fatalf("RETR returned %d bytes, want the %d appended", got.Len(), msg.Len())
	}
	sizes := gc.writes()
	biggest := 0
	for _, n := range sizes {
		biggest = max(biggest, n)
	}
	// Without gathering each write carries one record: at most 16 KiB
	// (13,370 bytes when the dial skipped UnderTLS).
	if biggest <= 16<<10 {
		t.Errorf("largest write of the relayed RETR to the client = %d bytes (%d writes), want more than one 16 KiB record's worth", biggest, len(sizes))
	}
}
