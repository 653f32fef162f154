package main

import (
	"io"
	"net"
	"sync"
	"time"
)

// slowLink forwards TCP connections to target, pacing the bytes from the
// target to all clients together at rate bytes per second: a stand-in for
// the Internet link between a site and Microsoft 365, which both direct
// clients and the proxy share. The other direction is not paced.
type slowLink struct {
	net.Listener
	target string
	rate   float64

	mu   sync.Mutex // protects next
	next time.Time  // when the link is free again
}

func newSlowLink(target string, rate float64) (*slowLink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &slowLink{Listener: ln, target: target, rate: rate}
	go l.serve()
	return l, nil
}

func (l *slowLink) serve() {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go l.forward(c)
	}
}

func (l *slowLink) forward(c net.Conn) {
	defer c.Close()
	up, err := net.Dial("tcp", l.target)
	if err != nil {
		return
	}
	defer up.Close()
	go func() {
		io.Copy(up, c)
		up.(*net.TCPConn).CloseWrite()
	}()
	buf := make([]byte, 16<<10)
	for {
		n, err := up.Read(buf)
		if n > 0 {
			l.wait(n)
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			c.(*net.TCPConn).CloseWrite()
			return
		}
	}
}

// linkBurst is how far ahead of the link's pace a sender may get before it
// sleeps: timer granularity makes a sleep per chunk far too slow.
const linkBurst = 5 * time.Millisecond

// wait books n bytes on the link and sleeps while the link is more than
// linkBurst behind.
func (l *slowLink) wait(n int) {
	l.mu.Lock()
	now := time.Now()
	start := l.next
	if start.Before(now) {
		start = now
	}
	l.next = start.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	done := l.next
	l.mu.Unlock()
	if d := time.Until(done); d > linkBurst {
		time.Sleep(d - linkBurst)
	}
}
