package fake365

import (
	"bytes"
	"encoding/base64"
	"log/slog"
	"net"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"
)

// TB is the part of testing.TB the checks below use; the package does not
// import testing, so that the demo binary can link it.
type TB interface {
	Helper()
	Errorf(format string, args ...any)
}

// WaitGoroutines polls, for up to timeout, until no more than baseline
// goroutines run (take baseline with runtime.NumGoroutine before the code
// under test starts). It reports false, after an error with the stacks of
// all goroutines, when they do not settle: something was left behind.
func WaitGoroutines(t TB, baseline int, timeout time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	wait := time.Millisecond
	for {
		n := runtime.NumGoroutine()
		if n <= baseline {
			return true
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Errorf("goroutines = %d %v after the test, want at most %d as before it; stacks:\n%s", n, timeout, baseline, buf)
			return false
		}
		time.Sleep(wait) // polling, bounded by deadline; nothing to wait on
		wait = min(2*wait, 50*time.Millisecond)
	}
}

// Capture records text a test must check for leaked secrets: log output
// (Logger, or use it as an io.Writer) and the bytes a client received
// (Conn). It is safe for concurrent use.
type Capture struct {
	// Tee, if set, also gets every log line (for example a writer to
	// t.Log). Set it before use.
	Tee func(line string)

	mu  sync.Mutex // protects buf
	buf bytes.Buffer
}

// NewCapture returns an empty Capture.
func NewCapture() *Capture { return &Capture{} }

// Write records p.
func (c *Capture) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.buf.Write(p)
	c.mu.Unlock()
	if c.Tee != nil {
		c.Tee(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// Logger returns a logger writing text lines at debug level into c.
func (c *Capture) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(c, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Conn wraps nc so that every byte read from it (what the client received)
// is recorded in c.
func (c *Capture) Conn(nc net.Conn) net.Conn { return &captureConn{Conn: nc, c: c} }

type captureConn struct {
	net.Conn
	c *Capture
}

func (cc *captureConn) Read(b []byte) (int, error) {
	n, err := cc.Conn.Read(b)
	if n > 0 {
		cc.c.mu.Lock()
		cc.c.buf.Write(b[:n])
		cc.c.mu.Unlock()
	}
	return n, err
}

// String returns everything recorded so far.
func (c *Capture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// Leaks returns the names of the secrets (name -> value) that appear in
// what c recorded: as they are; base64-encoded, standard or URL alphabet,
// on its own or inside a longer encoded string (an XOAUTH2 or SASL PLAIN
// response); or, for values of 36 bytes or more, as any piece of 36 bytes
// or more of these forms (a token cut short in a log line is still a leak).
// Empty values are skipped.
func (c *Capture) Leaks(secrets map[string]string) []string {
	text := c.String()
	var windows map[string]struct{} // every leakWindow-byte piece of text
	var found []string
	for name, v := range secrets {
		if v == "" {
			continue
		}
		forms := encodings(v)
		if leaked(text, forms) {
			found = append(found, name)
			continue
		}
		if len(v) < leakWindow+leakStride {
			continue
		}
		if windows == nil {
			windows = make(map[string]struct{}, len(text))
			for i := 0; i+leakWindow <= len(text); i++ {
				windows[text[i:i+leakWindow]] = struct{}{}
			}
		}
		// Any piece of at least leakWindow+leakStride bytes holds one of
		// these.
	forms:
		for _, f := range forms {
			for i := 0; i+leakWindow <= len(f); i += leakStride {
				if _, ok := windows[f[i:i+leakWindow]]; ok {
					found = append(found, name)
					break forms
				}
			}
		}
	}
	sort.Strings(found)
	return found
}

const (
	leakWindow = 24
	leakStride = 12
)

// encodings returns v and the parts of its base64 encodings that depend on
// v alone: inside a longer base64 string v starts at one of three offsets
// modulo 3, and for each the characters not mixed with the bytes around it
// are a fixed string.
func encodings(v string) []string {
	forms := []string{v}
	for p := range 3 {
		raw := append(make([]byte, p), v...)
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
			e := enc.EncodeToString(raw)
			start := (8*p + 5) / 6
			if end := len(e) - 4; end-start >= 8 {
				forms = append(forms, e[start:end])
			}
		}
	}
	return forms
}

func leaked(text string, forms []string) bool {
	for _, f := range forms {
		if strings.Contains(text, f) {
			return true
		}
	}
	return false
}
