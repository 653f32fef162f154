package relay

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"mailproxy/internal/testutil"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// startRelayWith runs RelayWith in the background.
func startRelayWith(client net.Conn, clientBuf *bufio.Reader, upstream net.Conn, upstreamBuf *bufio.Reader, o RelayOptions) <-chan relayResult {
	ch := make(chan relayResult, 1)
	go func() {
		var r relayResult
		r.toUpstream, r.toClient, r.err = Relay(client, clientBuf, upstream, upstreamBuf, o)
		ch <- r
	}()
	return ch
}

const testBye = "* BYE shutting down\r\n"

// readUntilEOF reads c to the end within 10s.
func readUntilEOF(t *testing.T, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("client ReadAll() = %d bytes, %v, want EOF", len(b), err)
	}
	return b
}

// A session idle at a line boundary gets the line at once, then EOF; the
// upstream is closed.
func TestRelayGoodbyeIdle(t *testing.T) {
	for _, idle := range []time.Duration{0, time.Minute} {
		t.Run(fmt.Sprint("idle=", idle), func(t *testing.T) {
			clientFar, clientProxy := testutil.TCPPair(t)
			upProxy, upFar := testutil.TCPPair(t)
			var g Goodbye
			res := startRelayWith(clientProxy, nil, upProxy, nil, RelayOptions{Idle: idle, Goodbye: &g})
			upFar.Write([]byte("* OK hello\r\n"))
			clientFar.Write([]byte("a NOOP\r\n"))
			got := make([]byte, 12)
			clientFar.SetReadDeadline(time.Now().Add(10 * time.Second))
			upFar.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(clientFar, got); err != nil {
				t.Fatalf("client ReadFull() = %v", err)
			}
			if _, err := io.ReadFull(upFar, got[:8]); err != nil {
				t.Fatalf("upstream ReadFull() = %v", err)
			}
			g.Say(testBye)
			g.Say("* BYE again\r\n") // only the first counts
			if b := readUntilEOF(t, clientFar); string(b) != testBye {
				t.Errorf("client read %q after Say, want %q and EOF", b, testBye)
			}
			upFar.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := upFar.Read(got); err == nil || isTimeout(err) {
				t.Errorf("upstream Read after the goodbye = %d, %v, want EOF or reset", n, err)
			}
			clientFar.Close()
			r := waitRelay(t, res)
			if !errors.Is(r.err, ErrSaidGoodbye) || r.toClient != 12 || r.toUpstream != 8 {
				t.Errorf("Relay() = %d, %d, %v, want 8, 12, ErrSaidGoodbye", r.toUpstream, r.toClient, r.err)
			}
		})
	}
}

// A client that ignores the end of the stream is closed soon after the
// line.
func TestRelayGoodbyeClientStaysOpen(t *testing.T) {
	clientFar, clientProxy := testutil.TCPPair(t)
	upProxy, _ := testutil.TCPPair(t)
	var g Goodbye
	g.Say(testBye) // before the relay starts
	res := startRelayWith(clientProxy, nil, upProxy, nil, RelayOptions{Idle: time.Hour, Goodbye: &g})
	if b := readUntilEOF(t, clientFar); string(b) != testBye {
		t.Errorf("client read %q, want %q and EOF", b, testBye)
	}
	start := time.Now()
	if r := waitRelay(t, res); !errors.Is(r.err, ErrSaidGoodbye) {
		t.Errorf("Relay() = %v, want ErrSaidGoodbye", r.err)
	}
	if d := time.Since(start); d > goodbyeLinger+5*time.Second {
		t.Errorf("RelayWith returned %v after the goodbye, want about %v", d, goodbyeLinger)
	}
}

// After the upstream ended its stream (the answer to LOGOUT), a goodbye
// does not wait for the client to hang up.
func TestRelayGoodbyeAfterUpstreamEOF(t *testing.T) {
	clientFar, clientProxy := testutil.TCPPair(t)
	upProxy, upFar := testutil.TCPPair(t)
	var g Goodbye
	res := startRelayWith(clientProxy, nil, upProxy, nil, RelayOptions{Goodbye: &g})
	upFar.Write([]byte("* BYE logging out\r\na OK LOGOUT completed\r\n"))
	upFar.CloseWrite()
	if b := readUntilEOF(t, clientFar); string(b) != "* BYE logging out\r\na OK LOGOUT completed\r\n" {
		t.Errorf("client read %q, want the upstream's answer and EOF", b)
	}
	g.Say(testBye)
	if r := waitRelay(t, res); r.err != nil {
		t.Errorf("Relay() = %v, want nil", r.err)
	}
}

// testSafePoint is a SafePoint the test steers: unsafe while hold is set.
// It counts the bytes it is given.
type testSafePoint struct {
	hold             atomic.Bool
	upstream, client atomic.Int64
}

func (p *testSafePoint) FromUpstream(b []byte) { p.upstream.Add(int64(len(b))) }
func (p *testSafePoint) FromClient(b []byte)   { p.client.Add(int64(len(b))) }
func (p *testSafePoint) Safe() bool            { return !p.hold.Load() }

// The goodbye waits for the SafePoint: what the upstream sends while it
// says no goes to the client, and the line follows the first chunk after
// it says yes. The SafePoint sees every byte of both streams.
func TestRelayGoodbyeWaitsForSafePoint(t *testing.T) {
	clientFar, clientProxy := testutil.TCPPair(t)
	upProxy, upFar := testutil.TCPPair(t)
	var g Goodbye
	var sp testSafePoint
	sp.hold.Store(true)
	res := startRelayWith(clientProxy, nil, upProxy, nil, RelayOptions{Goodbye: &g, SafePoint: &sp})
	clientFar.Write([]byte("a NOOP\r\n"))
	got := make([]byte, 64)
	upFar.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(upFar, got[:8]); err != nil {
		t.Fatalf("upstream ReadFull() = %v", err)
	}
	g.Say(testBye)
	const held, last = "* 1 FETCH (BODY[] {3}\r\n", "abc)\r\n"
	upFar.Write([]byte(held))
	clientFar.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(clientFar, got[:len(held)]); err != nil || string(got[:len(held)]) != held {
		t.Fatalf("client ReadFull() = %q, %v, want %q", got[:len(held)], err, held)
	}
	select {
	case r := <-res:
		t.Fatalf("Relay() = %v while the SafePoint says no, want it to go on", r.err)
	default:
	}
	sp.hold.Store(false)
	upFar.Write([]byte(last))
	if b := readUntilEOF(t, clientFar); string(b) != last+testBye {
		t.Errorf("client read %q, want %q and EOF", b, last+testBye)
	}
	clientFar.Close()
	r := waitRelay(t, res)
	if !errors.Is(r.err, ErrSaidGoodbye) {
		t.Errorf("Relay() = %v, want ErrSaidGoodbye", r.err)
	}
	if up, cl := sp.upstream.Load(), sp.client.Load(); up != int64(len(held+last)) || cl != 8 || r.toClient != up || r.toUpstream != cl {
		t.Errorf("SafePoint saw %d upstream and %d client bytes; Relay() = %d, %d; want %d and 8 both", up, cl, r.toUpstream, r.toClient, len(held+last))
	}
}
