package imap

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mailproxy/internal/testutil"
	"mailproxy/relay"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// relayResult is what relay.Relay returned.
type relayResult struct {
	toUpstream, toClient int64
	err                  error
}

// startGoodbyeRelay runs relay.Relay in the background with g as its
// Goodbye and SafePoint, and an idle timeout.
func startGoodbyeRelay(client net.Conn, clientBuf *bufio.Reader, upstream net.Conn, upstreamBuf *bufio.Reader, idle time.Duration, g *goodbye) <-chan relayResult {
	ch := make(chan relayResult, 1)
	go func() {
		var r relayResult
		r.toUpstream, r.toClient, r.err = relay.Relay(client, clientBuf, upstream, upstreamBuf, relay.RelayOptions{Idle: idle, Goodbye: &g.Goodbye, SafePoint: g})
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

// relayBufSize is relay's largest chunk: imapChunk fills one.
const relayBufSize = 64 << 10

// refSafePoints is the reference for literalTracker: it reads the whole
// stream at once and returns, for every offset 0..len(s), whether the
// stream up to there ends between lines. It parses independently of the
// tracker: line by line, skipping literals by their size.
func refSafePoints(s []byte) []bool {
	safe := make([]bool, len(s)+1)
	safe[0] = true
	seg := 0 // where the current line, or its part after a literal, began
	for i := 0; i < len(s); i++ {
		if s[i] != '\n' {
			continue
		}
		line := bytes.TrimSuffix(s[seg:i], []byte("\r"))
		if n, ok := refAnnouncement(line); ok {
			if n > int64(len(s)-(i+1)) {
				return safe // the literal runs past the end
			}
			i += int(n)
			seg = i + 1
			continue
		}
		safe[i+1] = true
		seg = i + 1
	}
	return safe
}

// refAnnouncement reports whether line ends with "{n}" or "{n+}"; more
// than 12 digits, whatever comes before them, is a literal without end.
func refAnnouncement(line []byte) (int64, bool) {
	rest, ok := bytes.CutSuffix(line, []byte("}"))
	if !ok {
		return 0, false
	}
	rest = bytes.TrimSuffix(rest, []byte("+"))
	digits := len(rest) - len(bytes.TrimRightFunc(rest, func(r rune) bool { return '0' <= r && r <= '9' }))
	if digits > 12 {
		return 1<<63 - 1, true
	}
	if digits == 0 || len(rest) == digits || rest[len(rest)-digits-1] != '{' {
		return 0, false
	}
	n, err := strconv.ParseInt(string(rest[len(rest)-digits:]), 10, 64)
	if err != nil {
		return 1<<63 - 1, true
	}
	return n, true
}

// checkChunked feeds s to a tracker in the chunks that sizes gives and
// compares it with the reference after each one.
func checkChunked(t *testing.T, s []byte, sizes func() int) {
	t.Helper()
	want := refSafePoints(s)
	var lt literalTracker
	var cuts []int
	for off := 0; off < len(s); {
		n := min(max(sizes(), 1), len(s)-off)
		lt.feed(s[off : off+n])
		off += n
		cuts = append(cuts, off)
		if got := lt.safe(); got != want[off] {
			t.Fatalf("literalTracker fed %q in chunks ending at %v: safe() = %v, want %v", s, cuts, got, want[off])
		}
	}
}

func TestLiteralTracker(t *testing.T) {
	tests := []struct {
		stream string
		safe   []int // offsets where the stream is between lines
	}{
		{"", []int{0}},
		{"* OK ready\r\n", []int{0, 12}},
		{"* 1 EXISTS\r\n* 2 RECENT\r\n", []int{0, 12, 24}},
		{"\r\n\n", []int{0, 2, 3}},
		{"* 1 EXISTS", []int{0}},
		{"* 1 EXISTS\r", []int{0}},
		// A literal in the middle of a line; the line goes on after it.
		{"* 1 FETCH (BODY[] {5}\r\nab\r\nc)\r\n", []int{0, 31}},
		{"* 1 FETCH (BODY[] {0}\r\n)\r\n", []int{0, 26}},
		{"* 1 FETCH (BODY[] {4}\r\nab\r\n)\r\n", []int{0, 30}},
		// Literal data that looks like an announcement or a line end.
		{"* 1 FETCH (BODY[] {5}\r\n{2}\r\n)\r\n", []int{0, 31}},
		// Two literals in one response.
		{"* 1 FETCH (BODY[HEADER] {3}\r\nh\r\n BODY[TEXT] {2}\r\n}\n)\r\na OK\r\n", []int{0, 54, 60}},
		// The literal "{12" and then "3}": not an announcement, the "{"
		// is literal data.
		{"* X {3}\r\n{123}\r\n", []int{0, 16}},
		{"* X {3}\r\n{12\r\n3}\r\n", []int{0, 14, 18}},
		// Non-synchronizing and literal8 forms, LF-only line endings.
		{"a {3+}\r\nxyz\r\n", []int{0, 13}},
		{"* 1 FETCH (BINARY[] ~{2}\r\nxy)\r\n", []int{0, 31}},
		{"* X {5}\n12345\n", []int{0, 14}},
		// Not announcements.
		{"* OK {abc}\r\n", []int{0, 12}},
		{"* OK {}\r\n", []int{0, 9}},
		{"* OK 5}\r\n", []int{0, 9}},
		{"* OK {5}x\r\n", []int{0, 11}},
		{"* OK {5}\r\r\n", []int{0, 11}},
		{"* OK {+}\r\n", []int{0, 10}},
		// A status text that ends like an announcement is taken for one:
		// the tracker waits for nothing rather than cutting in.
		{"* OK hi {5}\r\n* 1 EXISTS\r\n", []int{0, 25}},
		// Sizes without end: more than 12 digits (maxLiteralDigits, the
		// command parser's bound too).
		{"* X {99999999999999999999}\r\n* OK\r\n", []int{0}},
		{"* X 1234567890123}\r\n* OK\r\n", []int{0}},
		{"* X {0000000000005}\r\n12345\r\n", []int{0}},
		// 12 digits: a literal of their size.
		{"* X {000000000005}\r\n12345\r\n", []int{0, 27}},
		{"* X {999999999999}\r\n12345\r\n", []int{0}},
	}
	for _, tt := range tests {
		s := []byte(tt.stream)
		var got []int
		for i, ok := range refSafePoints(s) {
			if ok {
				got = append(got, i)
			}
		}
		if !slices.Equal(got, tt.safe) {
			t.Errorf("refSafePoints(%q) = %v, want %v", tt.stream, got, tt.safe)
			continue
		}
		var lt literalTracker
		lt.feed(s)
		if want := slices.Contains(tt.safe, len(s)); lt.safe() != want {
			t.Errorf("literalTracker fed %q at once: safe() = %v, want %v", tt.stream, lt.safe(), want)
		}
		for size := 1; size <= 8; size++ {
			checkChunked(t, s, func() int { return size })
		}
	}
}

// imapStream returns a random server stream: status lines, FETCH
// responses with literals of random size and content (announcements,
// braces and line endings included), split lines.
func imapStream(r *rand.Rand) []byte {
	junk := []string{"{", "}", "{12}", "{3+}", "\r\n", "\n", "\r", "7", "}\r", "x", " ", "~{1}"}
	var b []byte
	for range r.IntN(20) {
		switch r.IntN(5) {
		case 0:
			b = fmt.Appendf(b, "* %d EXISTS\r\n", r.IntN(1000))
		case 1:
			// Text that only looks like an announcement.
			b = append(b, "* OK {"+junk[r.IntN(len(junk))]+"}\r\n"...)
		case 2:
			b = append(b, junk[r.IntN(len(junk))]...)
		default:
			b = fmt.Appendf(b, "* %d FETCH (UID %d", r.IntN(100), r.IntN(100))
			for range 1 + r.IntN(3) {
				n := r.IntN(300)
				if r.IntN(4) == 0 {
					n = r.IntN(3)
				}
				b = fmt.Appendf(b, " BODY[] {%d", n)
				if r.IntN(4) == 0 {
					b = append(b, '+')
				}
				b = append(b, "}\r\n"...)
				for range n {
					if r.IntN(4) == 0 {
						b = append(b, junk[r.IntN(len(junk))][0])
					} else {
						b = append(b, byte('a'+r.IntN(26)))
					}
				}
			}
			b = append(b, ")\r\n"...)
		}
	}
	return b
}

// The tracker gives the reference's answer at every cut of every chunking.
func TestLiteralTrackerRandomChunks(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 3000 {
		s := imapStream(r)
		maxChunk := 1 + r.IntN(64)
		checkChunked(t, s, func() int { return 1 + r.IntN(maxChunk) })
	}
}

func FuzzLiteralTracker(f *testing.F) {
	f.Add([]byte("* 1 FETCH (BODY[] {5}\r\nab\r\nc)\r\na OK\r\n"), []byte{3, 1, 7})
	f.Add([]byte("* X {3}\r\n{12\r\n3}\r\n* OK {5}\r\r\n"), []byte{0})
	f.Add([]byte("* X {99999999999999999999}\r\n"), []byte{20, 1})
	r := rand.New(rand.NewPCG(3, 4))
	for range 10 {
		cuts := make([]byte, 8)
		for i := range cuts {
			cuts[i] = byte(r.IntN(40))
		}
		f.Add(imapStream(r), cuts)
	}
	f.Fuzz(func(t *testing.T, s, cuts []byte) {
		if len(cuts) == 0 {
			cuts = []byte{0}
		}
		i := 0
		checkChunked(t, s, func() int {
			i++
			return int(cuts[i%len(cuts)]) + 1
		})
	})
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

// A goodbye asked for in the middle of a literal waits until the literal
// and its line have ended; everything before it arrives intact. (The relay
// checks for a goodbye before every read, and Say wakes a read that
// waits, so every byte after the first third passes a check.)
func TestRelayGoodbyeAfterLiteral(t *testing.T) {
	cert := testutil.NewCert(t, "127.0.0.1")
	for _, kind := range []string{"tcp", "tls"} {
		t.Run(kind, func(t *testing.T) {
			clientFar, clientProxy := testutil.TCPPair(t)
			var upProxy, upFar net.Conn
			if kind == "tcp" {
				upProxy, upFar = testutil.TCPPair(t)
			} else {
				upProxy, upFar = testutil.TLSPair(t, cert)
			}
			var g goodbye
			res := startGoodbyeRelay(clientProxy, nil, upProxy, nil, 0, &g)

			const size = 3 << 20
			lit := bytes.Repeat([]byte("line of a message {12}\r\n"), size/24+1)[:size]
			var stream []byte
			stream = append(stream, "* 1 EXISTS\r\n"...)
			stream = fmt.Appendf(stream, "* 1 FETCH (UID 7 BODY[] {%d}\r\n", size)
			head := len(stream) + size/3
			stream = append(stream, lit...)
			stream = append(stream, ")\r\n"...)
			fetchEnd := len(stream)
			stream = append(stream, "a OK FETCH completed\r\n"...)

			// The client reads the first third: the relay is inside the
			// literal.
			go upFar.Write(stream[:head])
			clientFar.SetReadDeadline(time.Now().Add(20 * time.Second))
			first := make([]byte, head)
			if _, err := io.ReadFull(clientFar, first); err != nil {
				t.Fatalf("client ReadFull() = %v", err)
			}
			got := make(chan []byte, 1)
			go func() {
				b, _ := io.ReadAll(clientFar)
				clientFar.Close()
				got <- append(first, b...)
			}()
			g.Say(testBye)
			// The rest in small pieces, so that the literal's end, the
			// line's end and the tagged reply come in separate reads.
			for off := head; off < len(stream); {
				n := min(len(stream)-off, 1+off%7919)
				if _, err := upFar.Write(stream[off : off+n]); err != nil {
					break // closed after the goodbye
				}
				off += n
			}
			b := <-got
			prefix, ok := bytes.CutSuffix(b, []byte(testBye))
			safe := refSafePoints(stream)
			switch {
			case !ok:
				t.Fatalf("client read %d bytes ending %q, want them to end with %q", len(b), b[max(0, len(b)-80):], testBye)
			case !bytes.Equal(prefix, stream[:len(prefix)]):
				i := 0
				for i < len(prefix) && prefix[i] == stream[i] {
					i++
				}
				t.Fatalf("client bytes before the goodbye differ from the upstream's at offset %d", i)
			case len(prefix) < fetchEnd || !safe[len(prefix)]:
				t.Fatalf("goodbye written at offset %d, want after the FETCH response (%d) at a line boundary", len(prefix), fetchEnd)
			}
			if r := waitRelay(t, res); !errors.Is(r.err, relay.ErrSaidGoodbye) || r.toClient != int64(len(prefix)) {
				t.Errorf("Relay() = %d, %v, want %d, relay.ErrSaidGoodbye", r.toClient, r.err, len(prefix))
			}
		})
	}
}

// The upstream's bytes buffered before the relay count: a goodbye asked
// for before it started waits for the literal they began.
func TestRelayGoodbyeBufferedLiteral(t *testing.T) {
	clientFar, clientProxy := testutil.TCPPair(t)
	upProxy, upFar := testutil.TCPPair(t)
	const first = "* 1 FETCH (BODY[] {10}\r\n12345"
	upFar.Write([]byte(first))
	upBuf := bufio.NewReader(upProxy)
	upProxy.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := upBuf.Peek(len(first)); err != nil {
		t.Fatalf("Peek() = %v", err)
	}
	var g goodbye
	g.Say(testBye)
	res := startGoodbyeRelay(clientProxy, nil, upProxy, upBuf, 0, &g)
	got := make([]byte, len(first))
	clientFar.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(clientFar, got); err != nil {
		t.Fatalf("client ReadFull() = %v", err)
	}
	upFar.Write([]byte("67890)\r\n"))
	if b := readUntilEOF(t, clientFar); string(b) != "67890)\r\n"+testBye {
		t.Errorf("client read %q after the buffered bytes, want %q", b, "67890)\r\n"+testBye)
	}
	clientFar.Close()
	if r := waitRelay(t, res); !errors.Is(r.err, relay.ErrSaidGoodbye) {
		t.Errorf("Relay() = %v, want relay.ErrSaidGoodbye", r.err)
	}
}

func TestCompressWatch(t *testing.T) {
	tests := []struct {
		chunks []string
		want   bool
	}{
		{[]string{"a SELECT INBOX\r\n"}, false},
		{[]string{"c COMPRESS DEFLATE\r\n"}, true},
		{[]string{"c compress deflate\r\n"}, true},
		{[]string{"c CoMpReSs DEFLATE\r\n"}, true},
		{[]string{"c COMP", "RESS DEF", "LATE\r\n"}, true},
		{[]string{strings.Repeat("x", 100) + "c COMPRESS DEFLATE\r\n"}, true},
		{[]string{"c COMPRESS DEFLATE\r\n", strings.Repeat("x", 100)}, false},
		{[]string{"c COMPRES DEFLATE\r\n"}, false},
		{[]string{"c CUMPRESS DEFLATE\r\n"}, false},
	}
	for _, tt := range tests {
		var w compressWatch
		var got bool
		for _, c := range tt.chunks {
			got = w.feed([]byte(c))
		}
		if got != tt.want {
			t.Errorf("compressWatch fed %q = %v, want %v", tt.chunks, got, tt.want)
		}
	}
}

// After COMPRESS the upstream's stream is deflate data: no goodbye is
// written into it, whatever it looks like.
func TestRelayGoodbyeNotAfterCompress(t *testing.T) {
	clientFar, clientProxy := testutil.TCPPair(t)
	upProxy, upFar := testutil.TCPPair(t)
	var g goodbye
	res := startGoodbyeRelay(clientProxy, nil, upProxy, nil, 0, &g)
	const cmd, ok = "c COMPRESS DEFLATE\r\n", "c OK DEFLATE active\r\n"
	clientFar.Write([]byte(cmd))
	got := make([]byte, 64)
	upFar.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(upFar, got[:len(cmd)]); err != nil {
		t.Fatalf("upstream ReadFull() = %v", err)
	}
	upFar.Write([]byte(ok))
	clientFar.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(clientFar, got[:len(ok)]); err != nil {
		t.Fatalf("client ReadFull() = %v", err)
	}
	g.Say(testBye)
	// Compressed bytes that happen to end in a line ending: the relay has
	// seen the goodbye before reading them, and goes on.
	upFar.Write([]byte("\x01\x02\r\n"))
	if _, err := io.ReadFull(clientFar, got[:4]); err != nil || string(got[:4]) != "\x01\x02\r\n" {
		t.Fatalf("client ReadFull() = %q, %v, want %q", got[:4], err, "\x01\x02\r\n")
	}
	select {
	case r := <-res:
		t.Fatalf("Relay() = %v after COMPRESS, want it to go on", r.err)
	default:
	}
	clientProxy.Close() // the shutdown deadline
	if r := waitRelay(t, res); errors.Is(r.err, relay.ErrSaidGoodbye) {
		t.Errorf("Relay() = %v, want the error of the closed connection", r.err)
	}
}

// A goodbye that never finds its moment (the literal does not end) leaves
// the session to the caller, who closes it.
func TestRelayGoodbyeNeverSafe(t *testing.T) {
	clientFar, clientProxy := testutil.TCPPair(t)
	upProxy, upFar := testutil.TCPPair(t)
	var g goodbye
	res := startGoodbyeRelay(clientProxy, nil, upProxy, nil, 0, &g)
	upFar.Write([]byte("* 1 FETCH (BODY[] {100}\r\nabc"))
	got := make([]byte, len("* 1 FETCH (BODY[] {100}\r\nabc"))
	clientFar.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(clientFar, got); err != nil {
		t.Fatalf("client ReadFull() = %v", err)
	}
	g.Say(testBye)
	// More of the literal, ending in a line ending: the relay has seen
	// the goodbye before reading it, and goes on.
	upFar.Write([]byte("def\r\n"))
	if _, err := io.ReadFull(clientFar, got[:5]); err != nil || string(got[:5]) != "def\r\n" {
		t.Fatalf("client ReadFull() = %q, %v, want %q", got[:5], err, "def\r\n")
	}
	select {
	case r := <-res:
		t.Fatalf("Relay() = %v inside a literal, want it to wait", r.err)
	default:
	}
	clientProxy.Close() // the shutdown deadline
	if r := waitRelay(t, res); errors.Is(r.err, relay.ErrSaidGoodbye) {
		t.Errorf("Relay() = %v, want the error of the closed connection", r.err)
	}
	if b := readUntilEOF(t, clientFar); bytes.Contains(b, []byte("BYE")) {
		t.Errorf("client read %q, want no goodbye", b)
	}
}

// imapChunk is 32 KiB of server stream made of whole responses: a FETCH
// with a literal and short untagged lines.
func imapChunk() []byte {
	var b []byte
	for i := 0; len(b) < relayBufSize-4<<10; i++ {
		b = fmt.Appendf(b, "* %d FETCH (UID %d FLAGS (\\Seen))\r\n", i+1, i+100)
	}
	n := relayBufSize - len(b) - len("* 1 FETCH (BODY[] {12345}\r\n)\r\n")
	b = fmt.Appendf(b, "* 1 FETCH (BODY[] {%05d}\r\n", n)
	b = append(b, bytes.Repeat([]byte("x"), n)...)
	b = append(b, ")\r\n"...)
	return b
}

// Watching for literals allocates nothing per chunk.
func TestRelayGoodbyeNoAllocs(t *testing.T) {
	clientFar, clientProxy := testutil.TCPPair(t)
	upProxy, upFar := testutil.TCPPair(t)
	var g goodbye
	res := startGoodbyeRelay(clientProxy, nil, upProxy, nil, time.Second, &g) // the deadline moves every 250ms
	data := imapChunk()
	if len(data) != relayBufSize {
		t.Fatalf("imapChunk() is %d bytes, want %d", len(data), relayBufSize)
	}
	buf := make([]byte, len(data))
	clientFar.SetReadDeadline(time.Now().Add(20 * time.Second))
	allocs := testing.AllocsPerRun(500, func() {
		if _, err := upFar.Write(data); err != nil {
			t.Fatalf("upstream Write() = %v", err)
		}
		if _, err := io.ReadFull(clientFar, buf); err != nil {
			select {
			case r := <-res:
				t.Fatalf("client ReadFull() = %v; Relay() = %v", err, r.err)
			case <-time.After(5 * time.Second):
				t.Fatalf("client ReadFull() = %v", err)
			}
		}
	})
	if allocs != 0 {
		t.Errorf("allocations per chunk with a Goodbye = %v, want 0", allocs)
	}
	g.Say(testBye)
	if b := readUntilEOF(t, clientFar); string(b) != testBye {
		t.Errorf("client read %q, want %q", b, testBye)
	}
	clientFar.Close()
	if r := waitRelay(t, res); !errors.Is(r.err, relay.ErrSaidGoodbye) {
		t.Errorf("Relay() = %v, want relay.ErrSaidGoodbye", r.err)
	}
}

func BenchmarkLiteralTracker(b *testing.B) {
	for _, tt := range []struct {
		name string
		data []byte
	}{
		{"zeros", make([]byte, relayBufSize)},
		{"imap", imapChunk()},
		{"lines", []byte(strings.Repeat("* 1 FETCH (UID 7 FLAGS (\\Seen))\r\n", relayBufSize/33))},
	} {
		b.Run(tt.name, func(b *testing.B) {
			var lt literalTracker
			b.SetBytes(int64(len(tt.data)))
			b.ReportAllocs()
			for b.Loop() {
				lt.feed(tt.data)
			}
		})
	}
}

// BenchmarkRelayGoodbye relays with the goodbye's literal tracking on:
// zeros (no line at all, every byte scanned) and a mix of short lines and
// a literal.
func BenchmarkRelayGoodbye(b *testing.B) {
	for _, tt := range []struct {
		name string
		data []byte
	}{
		{"zeros", make([]byte, 32<<10)},
		{"imap", imapChunk()},
	} {
		b.Run(tt.name, func(b *testing.B) {
			clientFar, clientProxy := testutil.TCPPair(b)
			upProxy, upFar := testutil.TCPPair(b)
			res := startGoodbyeRelay(clientProxy, nil, upProxy, nil, 0, new(goodbye))
			done := make(chan int64, 1)
			go func() {
				n, _ := io.Copy(io.Discard, clientFar)
				clientFar.Close()
				done <- n
			}()
			b.SetBytes(int64(len(tt.data)))
			b.ReportAllocs()
			var sent int64
			for b.Loop() {
				if _, err := upFar.Write(tt.data); err != nil {
					b.Fatalf("upstream Write: %v", err)
				}
				sent += int64(len(tt.data))
			}
			upFar.CloseWrite()
			if got := <-done; got != sent {
				b.Errorf("client received %d bytes, want %d", got, sent)
			}
			if r := <-res; r.err != nil || r.toClient != sent {
				b.Errorf("Relay = %d, %d, %v, want 0, %d, nil", r.toUpstream, r.toClient, r.err, sent)
			}
		})
	}
}

// The command parser and the tracker read a literal's size by one rule:
// the same sizes for announcements they both take, the same bound.
func TestLiteralSizeOneRule(t *testing.T) {
	for _, digits := range []string{"0", "5", "0005", "123456789012", "999999999999", "0000000000005", "1234567890123", "99999999999999999999999"} {
		spec, _, ok := literalSpec([]byte("{" + digits + "}"))
		if !ok {
			t.Fatalf("literalSpec({%s}) not ok", digits)
		}
		tracked, ok := literalSize([]byte("* X {" + digits))
		if !ok || tracked != spec {
			t.Errorf("{%s}: literalSize = %d, %v; literalSpec = %d", digits, tracked, ok, spec)
		}
		want := int64(math.MaxInt64)
		if len(digits) <= maxLiteralDigits {
			want, _ = strconv.ParseInt(digits, 10, 64)
		}
		if got := literalDigits([]byte(digits)); got != want {
			t.Errorf("literalDigits(%s) = %d, want %d", digits, got, want)
		}
	}
}
