package relay

import (
	"bufio"
	"errors"
	"io"
	"mailproxy/internal/testutil"
	"net"
	"testing"
	"time"
)

func startRelayIdle(client net.Conn, clientBuf *bufio.Reader, upstream net.Conn, upstreamBuf *bufio.Reader, idle time.Duration) <-chan relayResult {
	ch := make(chan relayResult, 1)
	go func() {
		var r relayResult
		r.toUpstream, r.toClient, r.err = Relay(client, clientBuf, upstream, upstreamBuf, RelayOptions{Idle: idle})
		ch <- r
	}()
	return ch
}

func TestRelayIdleTimeout(t *testing.T) {
	clientFar, clientProxy := testutil.TCPPair(t)
	upProxy, upFar := testutil.TCPPair(t)
	const idle = 200 * time.Millisecond
	start := time.Now()
	res := startRelayIdle(clientProxy, nil, upProxy, nil, idle)
	r := waitRelay(t, res)
	if !errors.Is(r.err, ErrIdleTimeout) {
		t.Errorf("Relay(Idle, silent) = %v, want ErrIdleTimeout", r.err)
	}
	if d := time.Since(start); d < idle {
		t.Errorf("Relay(Idle, silent) returned after %v, want at least %v", d, idle)
	}
	for name, c := range map[string]net.Conn{"client": clientFar, "upstream": upFar} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err == nil {
			t.Errorf("%s far end Read after the idle timeout = %d, nil, want the connection closed", name, n)
		}
	}
}

// Traffic in one direction only (an IMAP client in IDLE hearing untagged
// updates) keeps the session open.
func TestRelayIdleOneDirectionKeepsAlive(t *testing.T) {
	clientFar, clientProxy := testutil.TCPPair(t)
	upProxy, upFar := testutil.TCPPair(t)
	const idle = 200 * time.Millisecond
	res := startRelayIdle(clientProxy, nil, upProxy, nil, idle)
	got := readAll(clientFar)

	tick := time.NewTicker(idle / 4)
	defer tick.Stop()
	const updates = 12 // 3 idle timeouts' worth of time
	for range updates {
		<-tick.C
		if _, err := upFar.Write([]byte("* 1 EXISTS\r\n")); err != nil {
			t.Fatalf("upstream Write() = %v", err)
		}
	}
	select {
	case r := <-res:
		t.Fatalf("RelayIdle ended while the upstream was talking: %v", r.err)
	default:
	}
	r := waitRelay(t, res)
	if !errors.Is(r.err, ErrIdleTimeout) {
		t.Errorf("RelayIdle after the upstream fell silent = %v, want ErrIdleTimeout", r.err)
	}
	if b := <-got; len(b) != updates*len("* 1 EXISTS\r\n") {
		t.Errorf("client got %d bytes, want %d", len(b), updates*len("* 1 EXISTS\r\n"))
	}
}

// An idle timeout of 0 is Relay.
func TestRelayIdleZero(t *testing.T) {
	clientFar, clientProxy := testutil.TCPPair(t)
	upProxy, upFar := testutil.TCPPair(t)
	res := startRelayIdle(clientProxy, nil, upProxy, nil, 0)
	clientFar.Write([]byte("a NOOP\r\n"))
	buf := make([]byte, 8)
	upFar.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(upFar, buf); err != nil {
		t.Fatalf("upstream ReadFull() = %v", err)
	}
	clientFar.CloseWrite()
	upFar.CloseWrite()
	if r := waitRelay(t, res); r.err != nil || r.toUpstream != 8 {
		t.Errorf("Relay(Idle: 0) = %d, %d, %v, want 8, 0, nil", r.toUpstream, r.toClient, r.err)
	}
}

// The idle bookkeeping allocates nothing per chunk.
func TestRelayIdleNoAllocs(t *testing.T) {
	clientFar, clientProxy := testutil.TCPPair(t)
	upProxy, upFar := testutil.TCPPair(t)
	// The deadline moves every 250ms; 100ms idle made a slow (-race, loaded)
	// round trip of a 64 KiB chunk look idle.
	res := startRelayIdle(clientProxy, nil, upProxy, nil, time.Second)
	data := make([]byte, relayBufSize)
	buf := make([]byte, relayBufSize)
	clientFar.SetReadDeadline(time.Now().Add(20 * time.Second))
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := upFar.Write(data); err != nil {
			t.Fatalf("upstream Write() = %v", err)
		}
		if _, err := io.ReadFull(clientFar, buf); err != nil {
			t.Fatalf("client ReadFull() = %v", err)
		}
	})
	if allocs != 0 {
		t.Errorf("allocations per chunk through RelayIdle = %v, want 0", allocs)
	}
	upFar.CloseWrite()
	clientFar.CloseWrite()
	if r := waitRelay(t, res); r.err != nil {
		t.Errorf("Relay(Idle) = %v, want nil", r.err)
	}
}

func BenchmarkRelayIdle(b *testing.B) {
	clientFar, clientProxy := testutil.TCPPair(b)
	upProxy, upFar := testutil.TCPPair(b)
	const chunk = 32 << 10
	res := startRelayIdle(clientProxy, nil, upProxy, nil, 30*time.Minute)
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
	data := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ReportAllocs()
	var sent int64
	for b.Loop() {
		if _, err := upFar.Write(data); err != nil {
			b.Fatalf("upstream Write: %v", err)
		}
		sent += chunk
	}
	upFar.CloseWrite()
	if got := <-done; got != sent {
		b.Errorf("client received %d bytes, want %d", got, sent)
	}
	if r := <-res; r.err != nil || r.toClient != sent {
		b.Errorf("RelayIdle = %d, %d, %v, want 0, %d, nil", r.toUpstream, r.toClient, r.err, sent)
	}
}
