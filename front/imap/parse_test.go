package imap

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"mailproxy/auth"
	"mailproxy/front"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func newTestParser(in string, maxLine, maxLiteral int) (*parser, *bytes.Buffer) {
	out := new(bytes.Buffer)
	return &parser{
		r:          bufio.NewReaderSize(strings.NewReader(in), 16),
		w:          bufio.NewWriter(out),
		maxLine:    maxLine,
		maxLiteral: maxLiteral,
	}, out
}

// render shows the parsed command: "TAG NAME a:atom s:string ( )".
func render(p *parser) string {
	var b strings.Builder
	b.Write(p.bytes(p.tag))
	b.WriteString(" ")
	b.Write(p.bytes(p.name))
	for _, a := range p.args {
		b.WriteString(" ")
		switch a.kind {
		case argAtom:
			b.WriteString("a:")
		case argString:
			b.WriteString("s:")
		}
		b.Write(p.bytes(a.span))
	}
	return b.String()
}

func TestParser(t *testing.T) {
	const cont = "+ Ready for literal data\r\n"
	tests := []struct {
		in      string
		want    string // render of the first command
		wantErr error
		wantOut string // continuation requests written
		next    string // render of the second command, if any
	}{
		{in: "a1 LOGIN alice secret\r\n", want: "a1 LOGIN a:alice a:secret"},
		{in: "a1 login alice secret\n", want: "a1 LOGIN a:alice a:secret"},
		{in: "A.2 Capability\r\n", want: "A.2 CAPABILITY"},
		{in: "a LOGIN \"al ice\" \"p\\\"w\\\\d\"\r\n", want: `a LOGIN s:al ice s:p"w\d`},
		{in: "a LOGIN \"\" \"\"\r\n", want: "a LOGIN s: s:"},
		{in: "a LOGIN \"üser\" \"pässwörd✓\"\r\n", want: "a LOGIN s:üser s:pässwörd✓"},
		{in: "a LOGIN {5}\r\nalice {4+}\r\nä12\r\n", want: "a LOGIN s:alice s:ä12", wantOut: cont},
		{in: "a LOGIN {5}\r\nalice {3}\r\npwd\r\n", want: "a LOGIN s:alice s:pwd", wantOut: cont + cont},
		{in: "a LOGIN {0}\r\n {0+}\r\n\r\n", want: "a LOGIN s: s:", wantOut: cont},
		{in: "a LOGIN {2+}\r\n\r\n \"x\"\r\n", want: "a LOGIN s:\r\n s:x"},
		{in: "a ID (\"name\" \"x\" \"version\" NIL)\r\n", want: "a ID ( s:name s:x s:version a:NIL )"},
		{in: "a ID NIL\r\nb NOOP\r\n", want: "a ID a:NIL", next: "b NOOP"},
		{in: "a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n", want: "a AUTHENTICATE a:PLAIN a:AGFsaWNlAHNlY3JldA=="},
		{in: "a  LOGIN   x   y  \r\n", want: "a LOGIN a:x a:y"},

		{in: "\r\n", wantErr: errNoTag},
		{in: "+ x\r\n", wantErr: errNoTag},
		{in: "* x\r\n", wantErr: errNoTag},
		{in: "a\r\n", wantErr: errNoCommand},
		{in: "a \x01\r\n", wantErr: errNoCommand},
		{in: "a LOGIN \x01\r\n", wantErr: errBadChar},
		{in: "a LOGIN \"abc\r\n", wantErr: errUnterminated},
		{in: "a LOGIN \"a\\b\"\r\n", wantErr: errBadEscape},
		{in: "a LOGIN \"a\x00b\" x\r\n", wantErr: errNUL},
		{in: "a LOGIN {3}\r\na\x00b x\r\nb NOOP\r\n", wantErr: errNUL, wantOut: cont, next: "b NOOP"},
		{in: "a LOGIN {5} x\r\n", wantErr: errLiteralNotFinal},
		{in: "a LOGIN {x}\r\n", wantErr: errBadLiteral},
		{in: "a LOGIN {99999999999}\r\nb NOOP\r\n", wantErr: errSyncLiteralBig, next: "b NOOP"},
		{in: "a LOGIN {99999999999999999999999}\r\n", wantErr: errSyncLiteralBig},
		{in: "a LOGIN {99999999999+}\r\n", wantErr: errLiteralTooBig},
		{in: "a LOGIN {40+}\r\n", wantErr: errLiteralTooBig},
		{in: "a LOGIN {20+}\r\n01234567890123456789 {20+}\r\n", wantErr: errLiteralTooBig},
		// Too long but with an end: skipped, BAD, the next command in step.
		{in: "a LOGIN " + strings.Repeat("x", 100) + "\r\nb NOOP\r\n", wantErr: errCommandTooLong, next: "b NOOP"},
		{in: "a LOGIN {1+}\r\nx " + strings.Repeat("x", 60) + "\r\nb NOOP\r\n", wantErr: errCommandTooLong, next: "b NOOP"},
		{in: "a LOGIN " + strings.Repeat("x", 100) + " {3+}\r\nabc {2}\r\nb NOOP\r\n", wantErr: errCommandTooLong, next: "b NOOP"},
		{in: "a LOGIN " + strings.Repeat("x", 100) + " {40+}\r\n", wantErr: errLiteralTooBig},
		// After an error, a trailing non-synchronizing literal still
		// belongs to the command and is skipped.
		{in: "a LOGIN \"x {3+}\r\nabc\r\nb NOOP\r\n", wantErr: errUnterminated, next: "b NOOP"},
		{in: "a LOGIN \x01 {3+}\r\nab\nc x {2+}\r\nxy\r\nb NOOP\r\n", wantErr: errBadChar, next: "b NOOP"},
		{in: "a LOGIN \x01 {3}\r\nb NOOP\r\n", wantErr: errBadChar, next: "b NOOP"},
		{in: "a LOGIN x", wantErr: io.ErrUnexpectedEOF},
		{in: "a LOGIN {5}\r\nab", wantErr: io.ErrUnexpectedEOF, wantOut: cont},
		{in: "", wantErr: io.EOF},
	}
	for _, tt := range tests {
		p, out := newTestParser(tt.in, 64, 32)
		err := p.readCommand()
		if err != tt.wantErr {
			t.Errorf("readCommand(%q) = %v, want %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil {
			if got := render(p); got != tt.want {
				t.Errorf("readCommand(%q) = %q, want %q", tt.in, got, tt.want)
			}
		}
		if got := out.String(); got != tt.wantOut {
			t.Errorf("readCommand(%q) wrote %q, want %q", tt.in, got, tt.wantOut)
		}
		if tt.next != "" {
			if err := p.readCommand(); err != nil {
				t.Errorf("readCommand(%q) second = %v, want nil", tt.in, err)
			} else if got := render(p); got != tt.next {
				t.Errorf("readCommand(%q) second = %q, want %q", tt.in, got, tt.next)
			}
		}
	}
}

func TestParserTagAfterError(t *testing.T) {
	p, _ := newTestParser("t1 LOGIN \"abc\r\n", 64, 32)
	if err := p.readCommand(); err != errUnterminated {
		t.Fatalf("readCommand() = %v, want %v", err, errUnterminated)
	}
	if got := string(p.bytes(p.tag)); got != "t1" {
		t.Errorf("tag after error = %q, want %q", got, "t1")
	}
}

// A line of many megabytes is refused after reading MaxLine bytes of it.
func TestParserLongLineBounded(t *testing.T) {
	r := &countingReader{r: io.MultiReader(strings.NewReader("a LOGIN "), &repeatReader{data: []byte("x")})}
	p := &parser{r: bufio.NewReaderSize(r, ioBufferSize), w: bufio.NewWriter(io.Discard), maxLine: DefaultMaxLine, maxLiteral: DefaultMaxLiteral}
	if err := p.readCommand(); err != errLineTooLong {
		t.Fatalf("readCommand() = %v, want %v", err, errLineTooLong)
	}
	if r.n > DefaultMaxLine+maxSkip+2*ioBufferSize {
		t.Errorf("read %d bytes of an endless line, want at most %d", r.n, DefaultMaxLine+maxSkip+2*ioBufferSize)
	}
	if cap(p.buf) > 2*DefaultMaxLine {
		t.Errorf("cap(buf) = %d, want at most %d", cap(p.buf), 2*DefaultMaxLine)
	}
}

func TestParserNoAllocs(t *testing.T) {
	for _, cmd := range []string{
		"a001 LOGIN alice@example.com \"correct \\\"horse\\\" battery\"\r\n",
		"a002 LOGIN {17}\r\nalice@example.com {6+}\r\nsecret\r\n",
		"a003 ID (\"name\" \"Thunderbird\" \"version\" \"128.0\")\r\n",
	} {
		p := &parser{r: bufio.NewReaderSize(&repeatReader{data: []byte(cmd)}, ioBufferSize), w: bufio.NewWriter(io.Discard), maxLine: DefaultMaxLine, maxLiteral: DefaultMaxLiteral}
		if err := p.readCommand(); err != nil { // grows the buffers
			t.Fatalf("readCommand(%q) = %v", cmd, err)
		}
		allocs := testing.AllocsPerRun(100, func() {
			if err := p.readCommand(); err != nil {
				t.Fatalf("readCommand(%q) = %v", cmd, err)
			}
		})
		if allocs != 0 {
			t.Errorf("readCommand(%q) allocates %v times, want 0", cmd, allocs)
		}
	}
}

func TestTrailingLiteral(t *testing.T) {
	tests := []struct {
		in   string
		n    int64
		sync bool
		ok   bool
	}{
		{"a LOGIN {5}", 5, true, true},
		{"a LOGIN {5+}", 5, false, true},
		{"{0}", 0, true, true},
		{"x {1234567890123}", 1<<63 - 1, true, true},
		{"x {}", 0, false, false},
		{"x {+}", 0, false, false},
		{"x {5", 0, false, false},
		{"x 5}", 0, false, false},
		{"x {5}x", 0, false, false},
		{"x {-5}", 0, false, false},
		{"x {5++}", 0, false, false},
		{"", 0, false, false},
	}
	for _, tt := range tests {
		n, sync, ok := trailingLiteral([]byte(tt.in))
		if n != tt.n || sync != tt.sync || ok != tt.ok {
			t.Errorf("trailingLiteral(%q) = %d, %v, %v, want %d, %v, %v", tt.in, n, sync, ok, tt.n, tt.sync, tt.ok)
		}
	}
}

// repeatReader returns data over and over.
type repeatReader struct {
	data []byte
	off  int
}

func (r *repeatReader) Read(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		c := copy(b[n:], r.data[r.off:])
		n += c
		r.off = (r.off + c) % len(r.data)
	}
	return n, nil
}

type countingReader struct {
	r io.Reader
	n int
}

func (r *countingReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.n += n
	return n, err
}

func BenchmarkParseLogin(b *testing.B) {
	for _, bm := range []struct{ name, cmd string }{
		{"quoted", "a001 LOGIN alice@example.com \"correct horse battery staple\"\r\n"},
		{"literal+", "a001 LOGIN alice@example.com {28+}\r\ncorrect horse battery staple\r\n"},
	} {
		b.Run(bm.name, func(b *testing.B) {
			p := &parser{r: bufio.NewReaderSize(&repeatReader{data: []byte(bm.cmd)}, ioBufferSize), w: bufio.NewWriter(io.Discard), maxLine: DefaultMaxLine, maxLiteral: DefaultMaxLiteral}
			b.ReportAllocs()
			b.SetBytes(int64(len(bm.cmd)))
			for b.Loop() {
				if err := p.readCommand(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// memConn is a net.Conn over a byte string: what the client sends. Writes
// are discarded, deadlines ignored.
type memConn struct {
	r io.Reader
}

func (c *memConn) Read(b []byte) (int, error)         { return c.r.Read(b) }
func (c *memConn) Write(b []byte) (int, error)        { return len(b), nil }
func (c *memConn) Close() error                       { return nil }
func (c *memConn) LocalAddr() net.Addr                { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 143} }
func (c *memConn) RemoteAddr() net.Addr               { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000} }
func (c *memConn) SetDeadline(t time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(t time.Time) error { return nil }

// refusingAuth accepts no login: "alert"/"x" needs a sign-in, "busy"/"x" is
// unavailable, everything else fails.
type refusingAuth struct{}

func (refusingAuth) Authenticate(ctx context.Context, username, password string, remote netip.Addr) (*auth.Grant, error) {
	switch {
	case username == "alert" && password == "x":
		return nil, &auth.AuthError{Kind: auth.AuthNeedsSignIn, Msg: "account alert needs a new sign-in\r\n* injected"}
	case username == "busy" && password == "x":
		return nil, &auth.AuthError{Kind: auth.AuthUnavailable, Msg: "try later"}
	}
	return nil, &auth.AuthError{Kind: auth.AuthFailed, Msg: "invalid credentials", Err: auth.ErrBadCredentials}
}

func FuzzPreAuth(f *testing.F) {
	for _, s := range []string{
		"a LOGIN alice secret\r\n",
		"a LOGIN \"al\\\"ice\" \"p\\\\w\"\r\nb LOGOUT\r\n",
		"a LOGIN {5}\r\nalice {6+}\r\nsecret\r\n",
		"a LOGIN {99999999999}\r\nb NOOP\r\n",
		"a LOGIN {9+}\r\nabc\r\n",
		"a CAPABILITY\r\nb NOOP\r\nc ID (\"name\" \"x\")\r\nd ID NIL\r\ne STARTTLS\r\n",
		"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n",
		"a AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n",
		"a AUTHENTICATE PLAIN\r\n*\r\n",
		"a AUTHENTICATE LOGIN YWxpY2U=\r\nc2VjcmV0\r\n",
		"a AUTHENTICATE LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n",
		"a AUTHENTICATE PLAIN =\r\n",
		"a AUTHENTICATE PLAIN !!!\r\n",
		"a AUTHENTICATE XOAUTH2 abc\r\n",
		"a LOGIN alert x\r\nb LOGIN busy x\r\n",
		"a SELECT INBOX\r\nb FOO\r\n\r\n* x\r\n+ y\r\n",
		"a LOGIN \"x\x00\" y\r\n",
		"a LOGIN \"x {3+}\r\nabc\r\nb NOOP\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const maxLine, maxLiteral = 64, 32
		p := &parser{r: bufio.NewReaderSize(bytes.NewReader(data), 16), w: bufio.NewWriter(io.Discard), maxLine: maxLine, maxLiteral: maxLiteral}
		for range 1000 {
			err := p.readCommand()
			var ce *commandError
			if err != nil && !errors.As(err, &ce) {
				break
			}
			if len(p.buf) > maxLine+maxLiteral {
				t.Fatalf("len(buf) = %d, want at most %d", len(p.buf), maxLine+maxLiteral)
			}
			for _, a := range p.args {
				if a.start < 0 || a.start > a.end || a.end > len(p.buf) {
					t.Fatalf("arg span %v out of buf [0, %d)", a.span, len(p.buf))
				}
				if a.kind == argString && bytes.IndexByte(p.bytes(a.span), 0) >= 0 && err == nil {
					t.Fatalf("string argument %q with NUL accepted", p.bytes(a.span))
				}
			}
			if err == nil {
				if len(p.bytes(p.tag)) == 0 || len(p.bytes(p.name)) == 0 {
					t.Fatalf("command without tag or name: %q", render(p))
				}
				for _, c := range p.bytes(p.name) {
					if 'a' <= c && c <= 'z' {
						t.Fatalf("command name %q not upper-cased", p.bytes(p.name))
					}
				}
			}
		}

		// The whole pre-auth state machine over the same bytes.
		// Half of the inputs from a client that must use TLS first.
		plain := len(data)%2 == 0
		s := &Server{Auth: refusingAuth{}, Logger: slog.New(slog.DiscardHandler), MaxLine: maxLine, MaxLiteral: maxLiteral,
			PlaintextAllowed: func(netip.Addr) bool { return plain }}
		if outcome := s.init().ServeConn(&memConn{r: bytes.NewReader(data)}); outcome == front.OutcomeError {
			t.Fatalf("session outcome %q", outcome)
		}
	})
}
