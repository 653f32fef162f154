package smtpclient

import (
	"bufio"
	"bytes"
	"io"
	"net/textproto"
	"strings"
	"testing"
)

// textprotoDot is the reference: what go-smtp's client wrote, through
// net/textproto's byte-at-a-time DotWriter.
func textprotoDot(chunks ...[]byte) []byte {
	var out bytes.Buffer
	w := textproto.NewWriter(bufio.NewWriter(&out)).DotWriter()
	for _, c := range chunks {
		w.Write(c)
	}
	w.Close()
	return out.Bytes()
}

// bulkDot encodes the chunks with dotWriter, one Write each.
func bulkDot(chunks ...[]byte) []byte {
	var out bytes.Buffer
	bw := bufio.NewWriterSize(&out, 64)
	d := newDotWriter(bw)
	for _, c := range chunks {
		if n, err := d.Write(c); n != len(c) || err != nil {
			panic("dotWriter.Write failed")
		}
	}
	d.close()
	bw.Flush()
	return out.Bytes()
}

// decodeRFC undoes dot-stuffing as RFC 5321 says: lines end with CRLF, a
// line that is a single dot ends the data, one leading dot of a line is
// removed. It returns the data and whether the end line came last.
func decodeRFC(p []byte) ([]byte, bool) {
	var out []byte
	for len(p) > 0 {
		i := bytes.Index(p, []byte("\r\n"))
		if i < 0 {
			return append(out, p...), false
		}
		line := p[:i+2]
		p = p[i+2:]
		if string(line) == ".\r\n" {
			return out, len(p) == 0
		}
		out = append(out, bytes.TrimPrefix(line, []byte("."))...)
	}
	return out, false
}

func TestDotWriter(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "\r\n.\r\n"},
		{"a", "a\r\n.\r\n"},
		{"a\r\n", "a\r\n.\r\n"},
		{".", "..\r\n.\r\n"},
		{".\r\n", "..\r\n.\r\n"},
		{"..\r\n", "...\r\n.\r\n"},
		{"a\r\n.b\r\n", "a\r\n..b\r\n.\r\n"},
		{"a\r\n.\r\nb\r\n", "a\r\n..\r\nb\r\n.\r\n"},                      // no end line smuggled through
		{"a\n.\nb", "a\r\n..\r\nb\r\n.\r\n"},                              // bare LF becomes CRLF
		{"a\r\n.\nMAIL", "a\r\n..\r\nMAIL\r\n.\r\n"},                      // "\r\n.\n"
		{"\n", "\r\n.\r\n"},                                               // a lone LF
		{"\n\n.", "\r\n\r\n..\r\n.\r\n"},                                  // LF, LF, dot
		{"a\r", "a\r\n.\r\n"},                                             // missing LF of the last CRLF
		{"a\rb", "a\rb\r\n.\r\n"},                                         // a lone CR stays
		{"a\r\r\n", "a\r\r\r\n.\r\n"},                                     // textproto's quirk, kept
		{"\r.\r\n", "\r.\r\n.\r\n"},                                       // a dot after a lone CR
		{"a\r\n\r\n", "a\r\n\r\n.\r\n"},                                   // an empty last line
		{"\r\n.", "\r\n..\r\n.\r\n"},                                      // dot at the very end
		{"x\r\r\r\n.", "x\r\r\r\n..\r\n.\r\n"},                            // odd run of CRs
		{"x\r\r\r\r\n.", "x\r\r\r\r\r\n..\r\n.\r\n"},                      // even run of CRs
		{"Subject: s\r\n\r\nbody\r\n", "Subject: s\r\n\r\nbody\r\n.\r\n"}, // nothing to do
	} {
		if got := string(textprotoDot([]byte(tc.in))); got != tc.want {
			t.Fatalf("test table is wrong: textproto DotWriter(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if got := string(bulkDot([]byte(tc.in))); got != tc.want {
			t.Errorf("dotWriter(%q) = %q, want %q", tc.in, got, tc.want)
		}
		// Every split into two writes, and a write per byte.
		for i := 0; i <= len(tc.in); i++ {
			if got := string(bulkDot([]byte(tc.in[:i]), []byte(tc.in[i:]))); got != tc.want {
				t.Errorf("dotWriter(%q | %q) = %q, want %q", tc.in[:i], tc.in[i:], got, tc.want)
			}
		}
		var bytewise [][]byte
		for i := range len(tc.in) {
			bytewise = append(bytewise, []byte{tc.in[i]})
		}
		if got := string(bulkDot(bytewise...)); got != tc.want {
			t.Errorf("dotWriter(%q one byte per Write) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// FuzzDotWriter checks dotWriter against net/textproto's DotWriter for
// any data cut into writes anywhere, and that RFC 5321 decoding gives the
// data back (with CRLF line ends, for data without a lone CR).
func FuzzDotWriter(f *testing.F) {
	for _, s := range []string{"", ".", "a\r\n.\r\nb", "\n.\n", "\r\r\n.\r\n", "a\rb\n..\r\n", "x\r\n.y"} {
		f.Add([]byte(s), uint16(1), uint16(3))
	}
	f.Fuzz(func(t *testing.T, data []byte, cut1, cut2 uint16) {
		a := int(cut1) % (len(data) + 1)
		b := a + int(cut2)%(len(data)-a+1)
		want := textprotoDot(data)
		got := bulkDot(data[:a], data[a:b], data[b:])
		if !bytes.Equal(got, want) {
			t.Fatalf("dotWriter(%q | %q | %q) = %q, want %q", data[:a], data[a:b], data[b:], got, want)
		}
		if hasLoneCR(data) {
			return
		}
		dec, ended := decodeRFC(got)
		norm := normalizeLF(data)
		if len(norm) > 0 && !bytes.HasSuffix(norm, []byte("\r\n")) {
			norm = append(norm, "\r\n"...)
		}
		if len(norm) == 0 {
			norm = []byte("\r\n")
		}
		if !ended || !bytes.Equal(dec, norm) {
			t.Fatalf("decode(dotWriter(%q)) = %q, %v, want %q, true", data, dec, ended, norm)
		}
	})
}

func hasLoneCR(p []byte) bool {
	for i, c := range p {
		if c == '\r' && (i+1 == len(p) || p[i+1] != '\n') {
			return true
		}
	}
	return false
}

// normalizeLF turns bare LFs into CRLF.
func normalizeLF(p []byte) []byte {
	var out []byte
	for i, c := range p {
		if c == '\n' && (i == 0 || p[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	return out
}

// benchMessage is a 1 MiB message of 78-byte lines, every seventh
// starting with a dot.
func benchMessage() []byte {
	var b bytes.Buffer
	b.WriteString("Subject: bench\r\n\r\n")
	for i := 0; b.Len() < 1<<20; i++ {
		if i%7 == 0 {
			b.WriteString(".")
		}
		b.WriteString(strings.Repeat("x", 76) + "\r\n")
	}
	return b.Bytes()
}

// BenchmarkDotWriter compares the dot-stuffing of the upstream's message
// data, per byte of a 1 MiB message written in 32 KiB pieces.
func BenchmarkDotWriter(b *testing.B) {
	msg := benchMessage()
	b.Run("textproto", func(b *testing.B) {
		b.SetBytes(int64(len(msg)))
		b.ReportAllocs()
		bw := bufio.NewWriterSize(io.Discard, 32<<10)
		for b.Loop() {
			w := textproto.NewWriter(bw).DotWriter()
			for p := msg; len(p) > 0; p = p[min(len(p), 32<<10):] {
				w.Write(p[:min(len(p), 32<<10)])
			}
			w.Close()
		}
	})
	b.Run("bulk", func(b *testing.B) {
		b.SetBytes(int64(len(msg)))
		b.ReportAllocs()
		bw := bufio.NewWriterSize(io.Discard, 32<<10)
		for b.Loop() {
			d := dotWriter{w: bw}
			for p := msg; len(p) > 0; p = p[min(len(p), 32<<10):] {
				d.Write(p[:min(len(p), 32<<10)])
			}
			d.close()
			bw.Flush()
		}
	})
}
