package smtp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

// goSMTPRead is go-smtp v0.25.1's server data reader (data.go) with its
// line limit (lineLimitReader), transcribed: it returns the decoded data,
// the raw bytes it took and the error it reports. max 0: no size limit.
func goSMTPRead(raw []byte, max int64) (dec []byte, took int, err error) {
	const (
		stateBeginLine = iota
		stateDot
		stateDotCR
		stateCR
		stateData
	)
	state := stateBeginLine
	cur := 1 // the DATA line's LF was the last byte read
	for i, c := range raw {
		if c == '\n' {
			cur = 0
		}
		cur++
		if cur > maxLineLength {
			return dec, i, smtp.ErrTooLongLine
		}
		switch state {
		case stateBeginLine:
			if c == '.' {
				state = stateDot
				continue
			}
			if c == '\r' {
				state = stateCR
				break
			}
			state = stateData
		case stateDot:
			if c == '\r' {
				state = stateDotCR
				continue
			}
			state = stateData
		case stateDotCR:
			if c == '\n' {
				return dec, i + 1, nil
			}
			state = stateData
		case stateCR:
			if c == '\n' {
				state = stateBeginLine
				break
			}
			state = stateData
		case stateData:
			if c == '\r' {
				state = stateCR
			}
		}
		dec = append(dec, c)
		// Each Read is cut to what is left of max, and a Read with
		// nothing left fails: once max bytes are decoded, not even the
		// end line is read.
		if max > 0 && int64(len(dec)) >= max {
			return dec, i + 1, smtp.ErrDataTooLarge
		}
	}
	return dec, len(raw), io.ErrUnexpectedEOF
}

// chunkConn is a net.Conn whose reads return the chunks it holds, then EOF.
type chunkConn struct {
	net.Conn // nil: only Read is used
	chunks   [][]byte
}

func (c *chunkConn) Read(p []byte) (int, error) {
	for len(c.chunks) > 0 && len(c.chunks[0]) == 0 {
		c.chunks = c.chunks[1:]
	}
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.chunks[0])
	c.chunks[0] = c.chunks[0][n:]
	return n, nil
}

// rest is what a client still has to read: put aside, then unread chunks.
func (c *chunkConn) rest(cn *conn) []byte {
	out := append([]byte(nil), cn.pending...)
	for _, ch := range c.chunks {
		out = append(out, ch...)
	}
	return out
}

// split cuts p at the offsets of cuts (in order, clamped).
func split(p []byte, cuts ...int) [][]byte {
	var out [][]byte
	last := 0
	for _, c := range cuts {
		c = min(max(c, last), len(p))
		out = append(out, p[last:c])
		last = c
	}
	return append(out, p[last:])
}

// runRaw reads raw, delivered in chunks, with the bypass and a size limit;
// it returns what went upstream (encoded, with the final dot), the
// results of copyTo, and the connection afterwards.
func runRaw(t *testing.T, chunks [][]byte, max int64) (up []byte, n int64, rerr error, cc *chunkConn, c *conn) {
	t.Helper()
	cc = &chunkConn{}
	for _, ch := range chunks {
		cc.chunks = append(cc.chunks, append([]byte(nil), ch...))
	}
	c = &conn{Conn: cc, lineMode: true}
	var out bytes.Buffer
	bw := bufio.NewWriterSize(&out, 64)
	ds := &dataSender{buf: &dataBuffers{w: bw}, dw: dotWriter{w: bw}}
	d := newRawData(c, max)
	n, rerr, werr := d.copyTo(ds)
	if werr != nil {
		t.Fatalf("copyTo() write error %v", werr)
	}
	if rerr == nil {
		if ds.n != n {
			t.Errorf("copyTo(): dataSender counted %d bytes, copyTo %d", ds.n, n)
		}
		ds.dw.close()
	}
	bw.Flush()
	d.finish()
	return out.Bytes(), n, rerr, cc, c
}

// checkRaw runs the bypass over raw in the given chunks and compares with
// go-smtp's reader followed by textproto's DotWriter.
func checkRaw(t *testing.T, raw []byte, chunks [][]byte, max int64) {
	t.Helper()
	dec, took, wantErr := goSMTPRead(raw, max)
	up, n, rerr, cc, c := runRaw(t, chunks, max)
	name := fmt.Sprintf("bypass(%q in %d chunks, max %d)", truncate(string(raw), 200), len(chunks), max)
	if !errors.Is(rerr, wantErr) && !(rerr == nil && wantErr == nil) {
		t.Fatalf("%s error = %v, want %v", name, rerr, wantErr)
	}
	switch {
	case wantErr == nil:
		if want := textprotoDot(dec); !bytes.Equal(up, want) {
			t.Fatalf("%s sent upstream %q, want %q", name, up, want)
		}
		if n != int64(len(dec)) {
			t.Errorf("%s = %d bytes, want %d", name, n, len(dec))
		}
		if got, want := cc.rest(c), append([]byte(".\r\n"), raw[took:]...); !bytes.Equal(got, want) {
			t.Fatalf("%s left %q for go-smtp, want %q", name, got, want)
		}
	case errors.Is(wantErr, smtp.ErrDataTooLarge):
		// The rest of the message is read and dropped, as go-smtp does.
		_, took, err := goSMTPRead(raw, 0)
		if err == nil {
			if got, want := cc.rest(c), append([]byte(".\r\n"), raw[took:]...); !bytes.Equal(got, want) {
				t.Fatalf("%s left %q for go-smtp, want %q", name, got, want)
			}
		}
	case errors.Is(wantErr, smtp.ErrTooLongLine):
		if _, err := c.Read(make([]byte, 10)); err != smtp.ErrTooLongLine {
			t.Fatalf("%s: then Read() = %v, want ErrTooLongLine", name, err)
		}
	}
}

var rawCases = []string{
	".\r\n",
	"\r\n.\r\n",
	"a\r\n.\r\n",
	"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n",
	"..\r\n.\r\n",
	".a\r\n..b\r\n...\r\n.\r\nNOOP\r\nMAIL FROM:<a@b>\r\n",
	"a\n.\nb\r\n.\r\n",         // bare LFs: no end there
	"a\r\n.\nb\r\n.\r\n",       // "\r\n.\n": no end there
	"a\n.\r\nb\r\n.\r\n",       // "\n.\r\n": no end there
	"a\r\r\n.\r\nb\r\n.\r\n",   // go-smtp's CR-CR quirk: no end there
	"a\r\r\r\n.\r\nb\r\n.\r\n", // odd CR run: an end
	"a\r\n.\rb\r\n.\r\n",       // ".\r" then not LF: go-smtp drops both
	"a\rb\r\n.x\r\n.\r\n",      // lone CR in a line
	"\r\n\r\n\r\n.\r\n",        // empty lines
	"a\r\n.\r\r\n.\r\n",        // ".\r\r\n"
	"no end at all\r\n",        // cut short
	"no end, no CRLF",          // cut short mid-line
	"a\r\n.",                   // cut short after the dot
	"x\r\n.\r\n.\r\n.\r\n",     // more end lines after the end
	strings.Repeat("0123456789\r\n", 100) + ".\r\n",
}

func TestRawData(t *testing.T) {
	for _, s := range rawCases {
		raw := []byte(s)
		checkRaw(t, raw, [][]byte{raw}, 0)
		// Every cut into two reads.
		for i := 0; i <= len(raw); i++ {
			checkRaw(t, raw, split(raw, i), 0)
		}
		// One byte per read.
		checkRaw(t, raw, split(raw, seq(1, len(raw))...), 0)
		// Size limits around the message's size.
		dec, _, _ := goSMTPRead(raw, 0)
		for _, max := range []int64{1, int64(len(dec)) - 1, int64(len(dec)), int64(len(dec)) + 1} {
			if max > 0 {
				checkRaw(t, raw, [][]byte{raw}, max)
				checkRaw(t, raw, split(raw, len(raw)/2), max)
			}
		}
	}
}

func seq(from, to int) []int {
	var s []int
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}

// Lines longer than the bypass's buffer take the slow path; a line of
// maxLineLength fails as go-smtp's line limit does.
func TestRawDataLongLines(t *testing.T) {
	for _, size := range []int{rawBufferSize - 3, rawBufferSize - 2, rawBufferSize, rawBufferSize + 1, 50000, maxLineLength - 1, maxLineLength, maxLineLength + 10} {
		for _, prefix := range []string{"", ".", "a\r\n"} {
			raw := []byte(prefix + strings.Repeat("y", size) + "\r\nshort\r\n.\r\nQUIT\r\n")
			checkRaw(t, raw, [][]byte{raw}, 0)
			checkRaw(t, raw, split(raw, 1000, 40000, 60000), 0)
		}
	}
}

// FuzzRawData checks the bypass against go-smtp's reader and textproto's
// DotWriter for any input, cut into reads anywhere, with any size limit.
func FuzzRawData(f *testing.F) {
	for _, s := range rawCases {
		f.Add([]byte(s), uint16(3), uint16(7), uint16(0))
	}
	f.Fuzz(func(t *testing.T, raw []byte, cut1, cut2, max uint16) {
		a := int(cut1) % (len(raw) + 1)
		b := a + int(cut2)%(len(raw)-a+1)
		checkRaw(t, raw, split(raw, a, b), int64(max))
	})
}

// BenchmarkRawData measures the front's side of the DATA path per byte of
// a 1 MiB message read in 32 KiB pieces: go-smtp's reader (what the
// upstream side got before the bypass), and the bypass.
func BenchmarkRawData(b *testing.B) {
	msg := benchMessage()
	wire := textprotoDot(msg)
	b.Run("go-smtp-reader", func(b *testing.B) {
		b.SetBytes(int64(len(wire)))
		b.ReportAllocs()
		buf := make([]byte, 32<<10)
		for b.Loop() {
			// textproto's DotReader is go-smtp's reader plus a CRLF
			// rewrite: the same byte-at-a-time loop.
			r := bufio.NewReader(&chunkConn{chunks: [][]byte{wire}})
			dr := newSMTPDataReader(r)
			for {
				if _, err := dr.Read(buf); err != nil {
					break
				}
			}
		}
	})
	b.Run("bypass", func(b *testing.B) {
		b.SetBytes(int64(len(wire)))
		b.ReportAllocs()
		bw := bufio.NewWriterSize(io.Discard, dataBufferSize)
		ds := &dataSender{buf: &dataBuffers{w: bw}, dw: dotWriter{w: bw}}
		cc := &chunkConn{}
		c := &conn{Conn: cc, lineMode: true}
		var chunks [][]byte
		for p := wire; len(p) > 0; p = p[min(len(p), 32<<10):] {
			chunks = append(chunks, p[:min(len(p), 32<<10)])
		}
		for b.Loop() {
			cc.chunks = append(cc.chunks[:0], chunks...)
			d := newRawData(c, 0)
			if _, rerr, werr := d.copyTo(ds); rerr != nil || werr != nil {
				b.Fatalf("copyTo() = %v, %v", rerr, werr)
			}
			d.finish()
			c.pending = nil
		}
	})
}

// smtpDataReader is go-smtp's reader state machine over a bufio.Reader,
// byte at a time (for the benchmark's baseline).
type smtpDataReader struct {
	r     *bufio.Reader
	state int
}

func newSMTPDataReader(r *bufio.Reader) *smtpDataReader { return &smtpDataReader{r: r} }

func (r *smtpDataReader) Read(b []byte) (n int, err error) {
	for n < len(b) && r.state != dataEOF {
		var c byte
		if c, err = r.r.ReadByte(); err != nil {
			return n, err
		}
		switch r.state {
		case dataBeginLine:
			if c == '.' {
				r.state = dataDot
				continue
			}
			if c == '\r' {
				r.state = dataCR
			} else {
				r.state = dataMid
			}
		case dataDot:
			if c == '\r' {
				r.state = dataDotCR
				continue
			}
			r.state = dataMid
		case dataDotCR:
			if c == '\n' {
				r.state = dataEOF
				continue
			}
			r.state = dataMid
		case dataCR:
			if c == '\n' {
				r.state = dataBeginLine
			} else {
				r.state = dataMid
			}
		case dataMid:
			if c == '\r' {
				r.state = dataCR
			}
		}
		b[n] = c
		n++
	}
	if r.state == dataEOF {
		err = io.EOF
	}
	return n, err
}
