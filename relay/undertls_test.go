package relay

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"mailproxy/internal/testutil"
)

// underPair returns a TLS connection the way the fronts dial upstreams
// (tls.Client over UnderTLS(raw)) and the server end, which writes records
// of at most record bytes (0: crypto/tls's choice). wrapRaw, when not nil,
// wraps the proxy's raw connection before UnderTLS does.
func underPair(t testing.TB, raw, far net.Conn, record int, wrapRaw func(net.Conn) net.Conn) (proxy *tls.Conn, server *recordWriter) {
	t.Helper()
	cert := testutil.NewCert(t, "127.0.0.1")
	if wrapRaw != nil {
		raw = wrapRaw(raw)
	}
	ccfg := cert.ClientConfig()
	ccfg.ServerName = "127.0.0.1"
	proxy = tls.Client(UnderTLS(raw), ccfg)
	scfg := cert.ServerConfig()
	scfg.DynamicRecordSizingDisabled = true
	srv := tls.Server(far, scfg)
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	if err := proxy.Handshake(); err != nil {
		t.Fatalf("client Handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server Handshake: %v", err)
	}
	return proxy, &recordWriter{Conn: srv, size: record}
}

// recordWriter writes each Write as records of at most size bytes, as a
// server with small records (Dovecot: 4 KiB) does.
type recordWriter struct {
	*tls.Conn
	size int
}

func (w *recordWriter) Write(b []byte) (int, error) {
	if w.size <= 0 {
		return w.Conn.Write(b)
	}
	n := 0
	for len(b) > 0 {
		k := min(len(b), w.size)
		m, err := w.Conn.Write(b[:k])
		n += m
		if err != nil {
			return n, err
		}
		b = b[k:]
	}
	return n, nil
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// Records that are already there when the relay reads go to the client in
// few large writes, not one (or two) per 4 KiB record.
func TestRelayGathersTLSRecords(t *testing.T) {
	const size = 96 << 10 // fits the loopback socket buffers: written before the relay reads
	raw, far := testutil.TCPPair(t)
	up, srv := underPair(t, raw, far, 4<<10, nil)
	data := pattern(size)
	if _, err := srv.Write(data); err != nil {
		t.Fatalf("upstream Write: %v", err)
	}
	clientFar, clientProxy := testutil.TCPPair(t)
	client := newWatchConn(clientProxy)
	res := startRelay(client, nil, up, nil)
	got := make([]byte, size)
	clientFar.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(clientFar, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("client ReadFull = %v, data equal %v", err, bytes.Equal(got, data))
	}
	client.mu.Lock()
	writes := client.writes
	client.mu.Unlock()
	if want := size / tlsMaxRecord; writes > want {
		t.Errorf("relay made %d writes to the client for %d bytes in 4 KiB records, want <= %d (one per 16 KiB)", writes, size, want)
	}
	clientFar.Close()
	srv.Close()
	waitRelay(t, res)
}

// Gathering never waits for more: a lone line, and the line that ends a
// stream, reach the client while the upstream sends nothing after them.
func TestRelayGatheringDoesNotDelayALoneLine(t *testing.T) {
	raw, far := testutil.TCPPair(t)
	up, srv := underPair(t, raw, far, 4<<10, nil)
	clientFar, clientProxy := testutil.TCPPair(t)
	res := startRelay(clientProxy, nil, up, nil)
	clientFar.SetReadDeadline(time.Now().Add(10 * time.Second))

	for _, msg := range [][]byte{
		[]byte("* 3 EXISTS\r\n"),
		append(pattern(200<<10), "a1 OK FETCH completed\r\n"...),
		[]byte("a2 OK NOOP completed\r\n"),
	} {
		if _, err := srv.Write(msg); err != nil {
			t.Fatalf("upstream Write: %v", err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(clientFar, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("client ReadFull of a %d-byte response with nothing after it = %v (equal %v), want it at once",
				len(msg), err, bytes.Equal(got, msg))
		}
	}
	clientFar.Close()
	srv.Close()
	waitRelay(t, res)
}

// A client that reads nothing stops the relay reading the upstream: under
// TLS too, the relay holds at most one buffer of data.
func TestRelayUnderTLSBackPressure(t *testing.T) {
	const total = 16 << 20
	rawProxy, rawFar := net.Pipe() // no buffering: what the relay read, it holds
	var watch *watchConn
	up, srv := underPair(t, rawProxy, rawFar, 4<<10, func(c net.Conn) net.Conn {
		watch = newWatchConn(c)
		return watch
	})
	clientFar, clientProxy := net.Pipe()
	client := newWatchConn(clientProxy)
	watch.mu.Lock()
	base := watch.readBytes // the handshake
	watch.mu.Unlock()
	res := startRelay(client, nil, up, nil)
	data := pattern(total)
	go func() {
		srv.Write(data)
		srv.CloseWrite()
	}()
	client.waitFor(t, "the relay to write to the client", func() bool { return client.inWrite })
	watch.waitFor(t, "the relay to wait on the upstream or the client", func() bool { return !watch.inRead || client.inWrite })
	watch.mu.Lock()
	read := watch.readBytes - base
	watch.mu.Unlock()
	// One relay buffer and what crypto/tls may hold (a record and a
	// read's worth of ciphertext), with the records' overhead.
	if limit := int64(relayBufSize + 3*tlsMaxRecord); read > limit {
		t.Errorf("relay read %d bytes from the upstream while the client read nothing, want <= %d", read, limit)
	}
	got := make([]byte, total)
	if _, err := io.ReadFull(clientFar, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("client ReadFull = %v, data equal %v", err, bytes.Equal(got, data))
	}
	// Unbuffered pipes: the relay's close_notify to the upstream would
	// wait for a reader.
	clientFar.Close()
	rawFar.Close()
	waitRelay(t, res)
}

// writeCounter counts Writes to the connection under TLS.
type writeCounter struct {
	net.Conn
	mu     sync.Mutex // protects writes
	writes int
}

func (w *writeCounter) Write(b []byte) (int, error) {
	w.mu.Lock()
	w.writes++
	w.mu.Unlock()
	return w.Conn.Write(b)
}

// What the client sends (an APPEND literal) goes to the upstream in one
// system call per relay chunk, not one per 16 KiB record.
func TestRelayUnderTLSGathersWrites(t *testing.T) {
	const size = 1 << 20
	raw, far := testutil.TCPPair(t)
	var wc *writeCounter
	up, srv := underPair(t, raw, far, 0, func(c net.Conn) net.Conn {
		wc = &writeCounter{Conn: c}
		return wc
	})
	wc.mu.Lock()
	base := wc.writes
	wc.mu.Unlock()
	clientFar, clientProxy := testutil.TCPPair(t)
	res := startRelay(clientProxy, nil, up, nil)
	data := pattern(size)
	go func() {
		clientFar.Write(data)
		clientFar.CloseWrite()
	}()
	got := make([]byte, size)
	srv.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(srv, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("upstream ReadFull = %v, data equal %v", err, bytes.Equal(got, data))
	}
	wc.mu.Lock()
	writes := wc.writes - base
	wc.mu.Unlock()
	// Plain TCP reads bring at least a few KiB each; every relay chunk,
	// however many records, is one write.
	records := size / tlsMaxRecord
	if writes >= records {
		t.Errorf("%d writes under TLS for %d bytes, want fewer than one per 16 KiB record (%d)", writes, size, records)
	}
	srv.Close()
	clientFar.Close()
	waitRelay(t, res)
}

// allocsPerChunk relays 64 KiB chunks in 4 KiB records from an upstream
// TLS connection (over UnderTLS when under) and returns the allocations
// per chunk.
func allocsPerChunk(t *testing.T, under bool) float64 {
	raw, far := testutil.TCPPair(t)
	var up *tls.Conn
	var srv *recordWriter
	if under {
		up, srv = underPair(t, raw, far, 4<<10, nil)
	} else {
		cert := testutil.NewCert(t, "127.0.0.1")
		ccfg := cert.ClientConfig()
		ccfg.ServerName = "127.0.0.1"
		up = tls.Client(raw, ccfg)
		scfg := cert.ServerConfig()
		scfg.DynamicRecordSizingDisabled = true
		s := tls.Server(far, scfg)
		errc := make(chan error, 1)
		go func() { errc <- s.Handshake() }()
		if err := up.Handshake(); err != nil || <-errc != nil {
			t.Fatalf("Handshake: %v", err)
		}
		srv = &recordWriter{Conn: s, size: 4 << 10}
	}
	clientFar, clientProxy := testutil.TCPPair(t)
	res := startRelay(clientProxy, nil, up, nil)
	data := pattern(relayBufSize)
	buf := make([]byte, len(data))
	clientFar.SetReadDeadline(time.Now().Add(20 * time.Second))
	// Warm the pools and crypto/tls's buffers.
	for range 3 {
		srv.Write(data)
		io.ReadFull(clientFar, buf)
	}
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := srv.Write(data); err != nil {
			t.Fatalf("upstream Write() = %v", err)
		}
		if _, err := io.ReadFull(clientFar, buf); err != nil {
			t.Fatalf("client ReadFull() = %v", err)
		}
	})
	clientFar.Close()
	srv.Close()
	waitRelay(t, res)
	return allocs
}

// Gathering allocates nothing of its own per chunk. crypto/tls allocates
// a small reader each time it refills its record buffer from the
// connection under it (about 8 times per 64 KiB of 4 KiB records, with or
// without UnderTLS); gathering adds at most the one refill that finds
// nothing more and ends a chunk.
func TestRelayUnderTLSNoAllocs(t *testing.T) {
	plain := allocsPerChunk(t, false)
	under := allocsPerChunk(t, true)
	if under > plain+1 {
		t.Errorf("allocations per 64 KiB chunk in 4 KiB records: %v over UnderTLS, %v from crypto/tls alone; want at most one more", under, plain)
	}
	t.Logf("allocations per 64 KiB chunk: %v over UnderTLS, %v from crypto/tls alone", under, plain)
}

// A TLS client of ours (implicit TLS, UnderTLSListener) gets what the
// relay sends in one system call per chunk, not one per 16 KiB record.
func TestRelayTLSClientGetsGatheredWrites(t *testing.T) {
	const size = 1 << 20
	cert := testutil.NewCert(t, "127.0.0.1")
	ln := UnderTLSListener(testutil.Listen(t))
	type accepted struct {
		tc  *tls.Conn
		wc  *writeCounter
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- accepted{err: err}
			return
		}
		uc := c.(*underConn)
		wc := &writeCounter{Conn: uc.Conn}
		uc.Conn = wc // count what goes to the socket; non-blocking reads still use it
		tc := tls.Server(c, cert.ServerConfig())
		ch <- accepted{tc, wc, tc.Handshake()}
	}()
	ccfg := cert.ClientConfig()
	ccfg.ServerName = "127.0.0.1"
	d := net.Dialer{Timeout: 10 * time.Second}
	far, err := tls.DialWithDialer(&d, "tcp", ln.Addr().String(), ccfg)
	if err != nil {
		t.Fatalf("tls.Dial: %v", err)
	}
	defer far.Close()
	a := <-ch
	if a.err != nil {
		t.Fatalf("Accept and handshake: %v", a.err)
	}
	client, wc := a.tc, a.wc
	wc.mu.Lock()
	base := wc.writes
	wc.mu.Unlock()

	upProxy, upFar := testutil.TCPPair(t)
	res := startRelay(client, nil, upProxy, nil)
	data := pattern(size)
	go func() {
		upFar.Write(data)
		upFar.CloseWrite()
	}()
	got := make([]byte, size)
	far.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(far, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("client ReadFull = %v, data equal %v", err, bytes.Equal(got, data))
	}
	wc.mu.Lock()
	writes := wc.writes - base
	wc.mu.Unlock()
	if records := size / tlsMaxRecord; writes >= records {
		t.Errorf("%d writes to the TLS client's socket for %d bytes, want fewer than one per 16 KiB record (%d)", writes, size, records)
	}
	far.Close()
	upFar.Close()
	waitRelay(t, res)
}

// streamer is a Streamer for tests: the upstream sends a message of total
// bytes; Pending is what is still to come (always, when stuck is set).
type streamer struct {
	mu    sync.Mutex // protects fed
	fed   int64
	total int64
	stuck bool // Pending is never 0: an announcement that was not one
}

func (s *streamer) FromUpstream(b []byte) { s.mu.Lock(); s.fed += int64(len(b)); s.mu.Unlock() }
func (s *streamer) FromClient([]byte)     {}
func (s *streamer) Safe() bool            { return s.Pending() == 0 }
func (s *streamer) Pending() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stuck {
		return 1 << 40
	}
	return max(s.total-s.fed, 0)
}

// A message that arrives one small record at a time, each sent only after
// the relay read the one before (an upstream slower than the relay, as
// Dovecot is), still goes to the client in writes of up to 64 KiB when
// the session's Streamer says more of it is due; the end of the message
// is not held back.
func TestRelayStreamerGathersPacedRecords(t *testing.T) {
	const size = 256 << 10
	raw, far := testutil.TCPPair(t)
	read := make(chan struct{}, 1)
	up, srv := underPair(t, raw, far, 0, func(c net.Conn) net.Conn {
		w := newWatchConn(c) // no SyscallConn: no read without waiting
		w.onRead = func(int64) {
			select {
			case read <- struct{}{}:
			default:
			}
		}
		return w
	})
	data := pattern(size)
	go func() {
		for off := 0; off < size; off += 4 << 10 {
			if _, err := srv.Write(data[off : off+4<<10]); err != nil {
				return
			}
			select {
			case <-read:
			case <-time.After(10 * time.Second):
				return
			}
		}
	}()
	clientFar, clientProxy := testutil.TCPPair(t)
	client := newWatchConn(clientProxy)
	var g Goodbye
	res := startRelayWith(client, nil, up, nil, RelayOptions{Goodbye: &g, SafePoint: &streamer{total: size}})
	got := make([]byte, size)
	clientFar.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(clientFar, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("client ReadFull = %v, data equal %v", err, bytes.Equal(got, data))
	}
	client.mu.Lock()
	writes := client.writes
	client.mu.Unlock()
	// One write per 16 KiB, and one more for the records of a chunk whose
	// hold ran out on a loaded machine.
	if want := size/tlsMaxRecord + 4; writes > want {
		t.Errorf("relay made %d writes to the client for %d bytes sent 4 KiB at a time, want <= %d", writes, size, want)
	}
	clientFar.Close()
	srv.Close()
	waitRelay(t, res)
}

// A Streamer that is wrong (Pending never 0: text that only looked like a
// literal announcement) delays a line by at most streamHold: the line
// reaches the client while the upstream sends nothing after it.
func TestRelayStreamerWrongPendingDoesNotStall(t *testing.T) {
	raw, far := testutil.TCPPair(t)
	up, srv := underPair(t, raw, far, 4<<10, func(c net.Conn) net.Conn { return newWatchConn(c) })
	clientFar, clientProxy := testutil.TCPPair(t)
	var g Goodbye
	res := startRelayWith(clientProxy, nil, up, nil, RelayOptions{Goodbye: &g, SafePoint: &streamer{stuck: true}})
	clientFar.SetReadDeadline(time.Now().Add(10 * time.Second))
	for _, msg := range [][]byte{
		[]byte("* OK [ALERT] not a literal {12}\r\n"),
		append(pattern(100<<10), "\r\na1 OK done\r\n"...),
	} {
		if _, err := srv.Write(msg); err != nil {
			t.Fatalf("upstream Write: %v", err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(clientFar, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("client ReadFull of %d bytes with nothing after them = %v (equal %v), want them after at most the hold",
				len(msg), err, bytes.Equal(got, msg))
		}
	}
	clientFar.Close()
	srv.Close()
	waitRelay(t, res)
}
