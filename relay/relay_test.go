package relay

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mailproxy/internal/testutil"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// relayResult is what Relay returned.
type relayResult struct {
	toUpstream, toClient int64
	err                  error
}

// startRelay runs Relay in the background and returns its result channel.
func startRelay(client net.Conn, clientBuf *bufio.Reader, upstream net.Conn, upstreamBuf *bufio.Reader) <-chan relayResult {
	return startRelayLinger(client, clientBuf, upstream, upstreamBuf, halfCloseIdle)
}

func startRelayLinger(client net.Conn, clientBuf *bufio.Reader, upstream net.Conn, upstreamBuf *bufio.Reader, linger time.Duration) <-chan relayResult {
	ch := make(chan relayResult, 1)
	go func() {
		var r relayResult
		r.toUpstream, r.toClient, r.err = relayWith(client, clientBuf, upstream, upstreamBuf, linger, RelayOptions{})
		ch <- r
	}()
	return ch
}

// waitRelay waits for Relay to return; a hang fails the test.
func waitRelay(t *testing.T, ch <-chan relayResult) relayResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatalf("Relay did not return within 10s")
		return relayResult{}
	}
}

// readAll reads c until EOF or error in the background.
func readAll(c net.Conn) <-chan []byte {
	ch := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(c)
		ch <- b
	}()
	return ch
}

// wantClosed checks that Relay closed c.
func wantClosed(t *testing.T, name string, c net.Conn) {
	t.Helper()
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("%s.Write after Relay returned = %v, want a closed-connection error", name, err)
	}
}

func TestRelayForwardsBufferedBytesFirst(t *testing.T) {
	clientTest, clientProxy := net.Pipe()
	upProxy, upTest := net.Pipe()

	// The front read the first line of each side through a bufio.Reader,
	// which also took the pipelined rest.
	clientBuf := bufio.NewReader(clientProxy)
	upBuf := bufio.NewReader(upProxy)
	go clientTest.Write([]byte("A1 LOGIN u p\r\nA2 SELECT INBOX\r\nA3 NOOP\r\n"))
	go upTest.Write([]byte("* OK ready\r\n* CAPABILITY IMAP4rev1\r\n"))
	if line, err := clientBuf.ReadString('\n'); err != nil || line != "A1 LOGIN u p\r\n" {
		t.Fatalf("client first line = %q, %v", line, err)
	}
	if line, err := upBuf.ReadString('\n'); err != nil || line != "* OK ready\r\n" {
		t.Fatalf("upstream first line = %q, %v", line, err)
	}

	res := startRelay(clientProxy, clientBuf, upProxy, upBuf)
	// net.Pipe writes block until read: write from goroutines.
	go clientTest.Write([]byte("A4 LOGOUT\r\n"))
	go upTest.Write([]byte("* BYE\r\n"))

	wantUp := "A2 SELECT INBOX\r\nA3 NOOP\r\nA4 LOGOUT\r\n"
	got := make([]byte, len(wantUp))
	if _, err := io.ReadFull(upTest, got); err != nil || string(got) != wantUp {
		t.Errorf("upstream received %q, %v, want %q", got, err, wantUp)
	}
	wantClient := "* CAPABILITY IMAP4rev1\r\n* BYE\r\n"
	got = make([]byte, len(wantClient))
	if _, err := io.ReadFull(clientTest, got); err != nil || string(got) != wantClient {
		t.Errorf("client received %q, %v, want %q", got, err, wantClient)
	}
	upTest.Close()
	if n, err := clientTest.Read(got); err != io.EOF {
		t.Errorf("client Read after the upstream closed = %d, %v, want EOF", n, err)
	}

	r := waitRelay(t, res)
	if r.err != nil || r.toUpstream != 37 || r.toClient != 31 {
		t.Errorf("Relay = %d, %d, %v, want 37, 31, nil", r.toUpstream, r.toClient, r.err)
	}
	wantClosed(t, "client", clientProxy)
	wantClosed(t, "upstream", upProxy)
}

// connPair is a connection with the proxy's end and the far end.
type connPair struct {
	proxy, far net.Conn
}

func TestRelayHalfClose(t *testing.T) {
	cert := testutil.NewCert(t, "127.0.0.1")
	kinds := map[string]func(t *testing.T) connPair{
		// proxy end first for tcpPair and tlsPair alike
		"tcp": func(t *testing.T) connPair { a, b := testutil.TCPPair(t); return connPair{a, b} },
		"tls": func(t *testing.T) connPair { a, b := testutil.TLSPair(t, cert); return connPair{a, b} },
	}
	for _, ck := range []string{"tcp", "tls"} {
		for _, uk := range []string{"tcp", "tls"} {
			t.Run("client "+ck+"/upstream "+uk, func(t *testing.T) {
				client, up := kinds[ck](t), kinds[uk](t)
				if ck == "tls" {
					// The client side of the proxy is the TLS server.
					client = connPair{proxy: client.far, far: client.proxy}
				}
				res := startRelay(client.proxy, nil, up.proxy, nil)

				// The client sends a request and half-closes; the upstream
				// must see all of it and then EOF, and can still answer.
				if _, err := client.far.Write([]byte("request")); err != nil {
					t.Fatalf("client Write: %v", err)
				}
				if err := client.far.(closeWriter).CloseWrite(); err != nil {
					t.Fatalf("client CloseWrite: %v", err)
				}
				got, err := io.ReadAll(up.far)
				if err != nil || string(got) != "request" {
					t.Fatalf("upstream read %q, %v, want %q, EOF", got, err, "request")
				}
				if _, err := up.far.Write([]byte("response")); err != nil {
					t.Fatalf("upstream Write after the client half-closed: %v", err)
				}
				up.far.Close()
				got, err = io.ReadAll(client.far)
				if err != nil || string(got) != "response" {
					t.Errorf("client read %q, %v, want %q, EOF", got, err, "response")
				}
				r := waitRelay(t, res)
				if r.err != nil || r.toUpstream != 7 || r.toClient != 8 {
					t.Errorf("Relay = %d, %d, %v, want 7, 8, nil", r.toUpstream, r.toClient, r.err)
				}
				wantClosed(t, "client", client.proxy)
				wantClosed(t, "upstream", up.proxy)
			})
		}
	}
}

func TestRelayUpstreamResetEndsIdleClient(t *testing.T) {
	clientFar, clientProxy := testutil.TCPPair(t)
	upProxy, upFar := testutil.TCPPair(t)
	res := startRelay(clientProxy, nil, upProxy, nil)
	if _, err := upFar.Write([]byte("* OK\r\n")); err != nil {
		t.Fatalf("upstream Write: %v", err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(clientFar, buf); err != nil {
		t.Fatalf("client ReadFull: %v", err)
	}
	// The upstream vanishes with a reset while the client idles (no data,
	// no close): Relay must notice and return.
	upFar.SetLinger(0)
	upFar.Close()
	r := waitRelay(t, res)
	if r.err == nil || !strings.HasPrefix(r.err.Error(), "read from upstream: ") {
		t.Errorf("Relay error = %v, want read from upstream: (connection reset)", r.err)
	}
	if n, err := clientFar.Read(buf); err == nil {
		t.Errorf("client Read after Relay returned = %d, nil, want the connection closed", n)
	}
}

func TestRelayClientResetWhileUpstreamStreams(t *testing.T) {
	clientFar, clientProxy := testutil.TCPPair(t)
	upProxy, upFar := testutil.TCPPair(t)
	res := startRelay(clientProxy, nil, upProxy, nil)
	writerDone := make(chan error, 1)
	go func() {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := upFar.Write(chunk); err != nil {
				writerDone <- err
				return
			}
		}
	}()
	// Take some data so that the stream is under way, then vanish.
	if _, err := io.ReadFull(clientFar, make([]byte, 100<<10)); err != nil {
		t.Fatalf("client ReadFull: %v", err)
	}
	clientFar.SetLinger(0)
	clientFar.Close()
	r := waitRelay(t, res)
	if r.err == nil || !strings.Contains(r.err.Error(), "client: ") {
		t.Errorf("Relay error = %v, want a client read or write error", r.err)
	}
	select {
	case <-writerDone:
	case <-time.After(10 * time.Second):
		t.Fatalf("upstream writer still running 10s after Relay returned: upstream not closed")
	}
}

func TestRelayClientGoneAfterEOFIsNotAnError(t *testing.T) {
	clientFar, clientProxy := testutil.TCPPair(t)
	upProxy, upFar := testutil.TCPPair(t)
	res := startRelay(clientProxy, nil, upProxy, nil)
	// Like a client that sends LOGOUT and goes away without waiting for
	// the answer.
	clientFar.Write([]byte("a LOGOUT\r\n"))
	clientFar.CloseWrite()
	if b, err := io.ReadAll(upFar); err != nil || string(b) != "a LOGOUT\r\n" {
		t.Fatalf("upstream read %q, %v, want %q, EOF", b, err, "a LOGOUT\r\n")
	}
	clientFar.SetLinger(0)
	clientFar.Close()
	upFar.Write([]byte("* BYE\r\na OK LOGOUT completed\r\n"))
	upFar.Close()
	if r := waitRelay(t, res); r.err != nil {
		t.Errorf("Relay = %v, want nil: the client had ended its side", r.err)
	}
}

func TestRelayCloseFromOutside(t *testing.T) {
	for _, side := range []string{"client", "upstream"} {
		t.Run(side, func(t *testing.T) {
			_, clientProxy := testutil.TCPPair(t)
			upProxy, _ := testutil.TCPPair(t)
			res := startRelay(clientProxy, nil, upProxy, nil)
			// Like a front's Shutdown: close one conn of a session idle both ways.
			if side == "client" {
				clientProxy.Close()
			} else {
				upProxy.Close()
			}
			r := waitRelay(t, res)
			if r.err == nil || !errors.Is(r.err, net.ErrClosed) {
				t.Errorf("Relay after closing %s = %v, want an error wrapping net.ErrClosed", side, r.err)
			}
		})
	}
}

func TestRelayPipeEOF(t *testing.T) {
	// net.Pipe cannot half-close: EOF from the upstream closes the client
	// end, and the client direction's error from that is not reported.
	clientFar, clientProxy := net.Pipe()
	upProxy, upFar := net.Pipe()
	res := startRelay(clientProxy, nil, upProxy, nil)
	got := readAll(clientFar)
	if _, err := upFar.Write([]byte("* BYE\r\n")); err != nil {
		t.Fatalf("upstream Write: %v", err)
	}
	upFar.Close()
	if b := <-got; string(b) != "* BYE\r\n" {
		t.Errorf("client received %q, want %q", b, "* BYE\r\n")
	}
	r := waitRelay(t, res)
	if r.err != nil || r.toClient != 7 || r.toUpstream != 0 {
		t.Errorf("Relay = %d, %d, %v, want 0, 7, nil", r.toUpstream, r.toClient, r.err)
	}
}

func TestRelayHalfClosedPeerMustKeepMoving(t *testing.T) {
	clientFar, clientProxy := testutil.TCPPair(t)
	upProxy, upFar := testutil.TCPPair(t)
	res := startRelayLinger(clientProxy, nil, upProxy, nil, 100*time.Millisecond)
	// The upstream ends its side; the client neither sends, nor reads, nor
	// closes. Relay must not wait for it forever.
	upFar.CloseWrite()
	r := waitRelay(t, res)
	if r.err == nil || !errors.Is(r.err, os.ErrDeadlineExceeded) || !strings.HasPrefix(r.err.Error(), "read from client: ") {
		t.Errorf("Relay = %v, want read from client: (deadline exceeded)", r.err)
	}
	if b, _ := io.ReadAll(clientFar); len(b) != 0 {
		t.Errorf("client received %q, want nothing", b)
	}
}

// watchConn records the Reads and Writes made on a net.Conn.
type watchConn struct {
	net.Conn
	mu        sync.Mutex // protects the fields below
	readSizes []int      // len(p) of every Read
	inRead    bool
	readBytes int64
	writes    int
	inWrite   bool
	onRead    func(total int64) // called after each Read, outside mu
	wake      chan struct{}     // cap 1: something changed
}

func newWatchConn(c net.Conn) *watchConn { return &watchConn{Conn: c, wake: make(chan struct{}, 1)} }

func (w *watchConn) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *watchConn) Read(p []byte) (int, error) {
	w.mu.Lock()
	w.readSizes = append(w.readSizes, len(p))
	w.inRead = true
	w.mu.Unlock()
	w.poke()
	n, err := w.Conn.Read(p)
	w.mu.Lock()
	w.inRead = false
	w.readBytes += int64(n)
	total := w.readBytes
	w.mu.Unlock()
	if w.onRead != nil {
		w.onRead(total)
	}
	w.poke()
	return n, err
}

func (w *watchConn) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.writes++
	w.inWrite = true
	w.mu.Unlock()
	w.poke()
	n, err := w.Conn.Write(p)
	w.mu.Lock()
	w.inWrite = false
	w.mu.Unlock()
	w.poke()
	return n, err
}

// waitFor blocks until cond (called with w.mu held) holds.
func (w *watchConn) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		w.mu.Lock()
		ok := cond()
		w.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-w.wake:
		case <-timeout:
			t.Fatalf("waited 10s for %s", what)
		}
	}
}

func TestRelayBackPressure(t *testing.T) {
	const total = 50 << 20
	const clientReadSize = 8 << 10
	// net.Pipe has no buffering: whatever the relay has read from the
	// upstream and the client has not, the relay holds.
	clientFar, clientProxy := net.Pipe()
	upProxy, upFar := net.Pipe()
	up := newWatchConn(upProxy)

	var mu sync.Mutex // protects received, maxAhead
	var received, maxAhead int64
	up.onRead = func(read int64) {
		mu.Lock()
		defer mu.Unlock()
		if ahead := read - received; ahead > maxAhead {
			maxAhead = ahead
		}
	}
	client := newWatchConn(clientProxy)
	res := startRelay(client, nil, up, nil)

	go func() {
		chunk := make([]byte, 64<<10)
		for i := range chunk {
			chunk[i] = byte(i % 251)
		}
		for sent := 0; sent < total; sent += len(chunk) {
			if _, err := upFar.Write(chunk); err != nil {
				return
			}
		}
		upFar.Close()
	}()

	// Phase 1: the client reads nothing. Once the relay is stuck writing
	// to it, it must have read at most one buffer from the upstream.
	client.waitFor(t, "the relay to write to the client", func() bool { return client.inWrite })
	up.mu.Lock()
	read := up.readBytes
	up.mu.Unlock()
	if read > relayBufSize {
		t.Errorf("relay read %d bytes from the upstream while the client read nothing, want <= %d", read, relayBufSize)
	}

	// Phase 2: the client reads slowly; the relay never gets further ahead
	// than one buffer (plus the read the client is just accounting for).
	pattern := make([]byte, 128<<10) // the writer's 64 KiB chunk, twice
	for i := range pattern {
		pattern[i] = byte(i % (64 << 10) % 251)
	}
	buf := make([]byte, clientReadSize)
	var pos int64
	for {
		n, err := clientFar.Read(buf)
		off := pos % (64 << 10)
		if !bytes.Equal(buf[:n], pattern[off:off+int64(n)]) {
			t.Fatalf("client bytes %d..%d differ from what the upstream sent", pos, pos+int64(n))
		}
		pos += int64(n)
		mu.Lock()
		received = pos
		mu.Unlock()
		if err != nil {
			break
		}
	}
	r := waitRelay(t, res)
	if pos != total || r.toClient != total || r.err != nil {
		t.Errorf("client received %d bytes; Relay = %d, %d, %v; want %d, 0, %d, nil", pos, r.toUpstream, r.toClient, r.err, total, total)
	}
	mu.Lock()
	defer mu.Unlock()
	if maxAhead > relayBufSize+clientReadSize {
		t.Errorf("relay was up to %d bytes ahead of the client, want <= %d", maxAhead, relayBufSize+clientReadSize)
	}
}

func TestRelayIdleDirectionHoldsNoPooledBuffer(t *testing.T) {
	cert := testutil.NewCert(t, "127.0.0.1")
	tests := []struct {
		name      string
		upstream  func(t *testing.T) (proxy, far net.Conn)
		size      int
		maxWrites int // writes to the client: one per chunk, not two
	}{
		{
			name:     "pipe",
			upstream: func(t *testing.T) (net.Conn, net.Conn) { a, b := net.Pipe(); return a, b },
			size:     1<<20 + 17,
			// 2 KiB, then 32 KiB reads: 33 writes in all.
			maxWrites: 34,
		},
		{
			name:     "tls",
			upstream: func(t *testing.T) (net.Conn, net.Conn) { a, b := testutil.TLSPair(t, cert); return a, b },
			size:     2<<20 + 17,
			// Go's TLS writes ~14 small records, then 16 KiB ones.
			maxWrites: (2<<20)/tlsMaxRecord + 40,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clientFar, clientProxy := net.Pipe()
			upProxy, upFar := tt.upstream(t)
			up := newWatchConn(upProxy)
			client := newWatchConn(clientProxy)
			res := startRelay(client, nil, up, nil)

			data := bytes.Repeat([]byte("0123456789abcdef"), tt.size/16+1)[:tt.size]
			go upFar.Write(data)
			got := make([]byte, len(data))
			if _, err := io.ReadFull(clientFar, got); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("client ReadFull = %v, data equal %v", err, bytes.Equal(got, data))
			}
			// Now idle: the relay waits in its next upstream Read.
			up.waitFor(t, "the relay's next upstream Read", func() bool { return up.inRead && up.readBytes == int64(tt.size) })
			up.mu.Lock()
			last := up.readSizes[len(up.readSizes)-1]
			up.mu.Unlock()
			if last != relayWaitSize {
				t.Errorf("idle upstream Read got a %d-byte buffer, want the %d-byte wait buffer", last, relayWaitSize)
			}
			client.mu.Lock()
			writes := client.writes
			client.mu.Unlock()
			if writes > tt.maxWrites {
				t.Errorf("relay made %d writes to the client for %d bytes, want <= %d", writes, tt.size, tt.maxWrites)
			}
			clientFar.Close()
			upFar.Close()
			waitRelay(t, res)
		})
	}
}

func TestRelayAdapt(t *testing.T) {
	h := &relayHalf{}
	steps := []struct {
		n       int
		wantBig bool
	}{
		{100, false},                         // small reads stay on the wait buffer
		{relayWaitSize, true},                // a full wait buffer: data is streaming
		{tlsMaxRecord - relayWaitSize, true}, // rest of a full TLS record
		{tlsMaxRecord, true},                 // full TLS records
		{relayBufSize, true},                 // full pooled buffer
		{5000, false},                        // short read: back to waiting small
		{relayWaitSize, true},
		{1000, false}, // the rest of a short record
	}
	for i, s := range steps {
		h.adapt(s.n)
		if (h.big != nil) != s.wantBig {
			t.Fatalf("step %d: adapt(%d): pooled buffer held = %v, want %v", i, s.n, h.big != nil, s.wantBig)
		}
	}
}

// benchRelay streams b.N chunks from the upstream far end through Relay to
// the client far end.
func benchRelay(b *testing.B, clientFar, clientProxy, upProxy, upFar net.Conn) {
	benchRelayWith(b, clientFar, clientProxy, upProxy, upFar, RelayOptions{}, make([]byte, 32<<10))
}

// benchRelayWith is benchRelay with options, sending data b.N times.
func benchRelayWith(b *testing.B, clientFar, clientProxy, upProxy, upFar net.Conn, o RelayOptions, data []byte) {
	chunk := len(data)
	res := startRelayWith(clientProxy, nil, upProxy, nil, o)
	done := make(chan int64, 1)
	go func() {
		buf := make([]byte, chunk)
		var n int64
		for {
			m, err := clientFar.Read(buf)
			n += int64(m)
			if err != nil {
				clientFar.Close()
				done <- n
				return
			}
		}
	}()
	b.SetBytes(int64(chunk))
	b.ReportAllocs()
	var sent int64
	for b.Loop() {
		if _, err := upFar.Write(data); err != nil {
			b.Fatalf("upstream Write: %v", err)
		}
		sent += int64(chunk)
	}
	upFar.(closeWriter).CloseWrite()
	if got := <-done; got != sent {
		b.Errorf("client received %d bytes, want %d", got, sent)
	}
	if r := <-res; r.err != nil || r.toClient != sent {
		b.Errorf("Relay = %d, %d, %v, want 0, %d, nil", r.toUpstream, r.toClient, r.err, sent)
	}
}

func BenchmarkRelay(b *testing.B) {
	b.Run("tcp", func(b *testing.B) {
		clientFar, clientProxy := testutil.TCPPair(b)
		upProxy, upFar := testutil.TCPPair(b)
		benchRelay(b, clientFar, clientProxy, upProxy, upFar)
	})
	// With a Goodbye and a SafePoint each chunk goes through the hook
	// (front/imap's BenchmarkRelayGoodbye measures its literal tracker).
	b.Run("tcp-goodbye", func(b *testing.B) {
		clientFar, clientProxy := testutil.TCPPair(b)
		upProxy, upFar := testutil.TCPPair(b)
		benchRelayWith(b, clientFar, clientProxy, upProxy, upFar, RelayOptions{Goodbye: new(Goodbye), SafePoint: new(testSafePoint)}, make([]byte, 32<<10))
	})
	b.Run("tls-upstream", func(b *testing.B) {
		cert := testutil.NewCert(b, "127.0.0.1")
		clientFar, clientProxy := testutil.TCPPair(b)
		upProxy, upFar := testutil.TLSPair(b, cert)
		benchRelay(b, clientFar, clientProxy, upProxy, upFar)
	})
	b.Run("direct-tls", func(b *testing.B) {
		// The baseline: the same TLS stream read without a relay.
		cert := testutil.NewCert(b, "127.0.0.1")
		c, s := testutil.TLSPair(b, cert)
		done := make(chan struct{})
		go func() {
			buf := make([]byte, 32<<10)
			for {
				if _, err := c.Read(buf); err != nil {
					close(done)
					return
				}
			}
		}()
		data := make([]byte, 32<<10)
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Write(data); err != nil {
				b.Fatalf("Write: %v", err)
			}
		}
		s.CloseWrite()
		<-done
	})
}

// panicConn panics on Read, like a buggy wrapper.
type panicConn struct{ net.Conn }

func (panicConn) Read([]byte) (int, error) { panic("boom") }

func TestRelayPanicEndsSession(t *testing.T) {
	clientFar, clientProxy := testutil.TCPPair(t)
	upProxy, _ := testutil.TCPPair(t)
	res := startRelay(clientProxy, nil, panicConn{upProxy}, nil)
	r := waitRelay(t, res)
	if r.err == nil || !strings.Contains(r.err.Error(), "panic: boom") {
		t.Errorf("Relay with a panicking upstream Read = %v, want an error with panic: boom", r.err)
	}
	if n, err := clientFar.Read(make([]byte, 1)); err == nil {
		t.Errorf("client Read after Relay returned = %d, nil, want the connection closed", n)
	}
}
