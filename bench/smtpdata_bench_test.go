package main

import (
	"bufio"
	"bytes"
	"io"
	"net/textproto"
	"testing"
)

// BenchmarkSMTPData compares two ways for the SMTP front to move message
// data from the client to the upstream, in memory, per byte of a 1 MiB
// dot-stuffed message:
//
//   - decode-encode is what front/smtp does today: go-smtp's server hands
//     the session a reader that undoes the dot-stuffing a byte at a time
//     (its dataReader is net/textproto's DotReader minus the CRLF
//     rewrite), and go-smtp's client writes through net/textproto's
//     DotWriter, which stuffs again a byte at a time.
//   - passthrough forwards the client's bytes as they are (they already
//     are in the encoding the upstream wants) and only looks for the
//     end-of-data line with bytes.Index, a chunk at a time.
func BenchmarkSMTPData(b *testing.B) {
	msg := makeMessage(1<<20, "SMTP data benchmark", 'd')
	var stuffed bytes.Buffer
	w := textproto.NewWriter(bufio.NewWriter(&stuffed)).DotWriter()
	w.Write(msg)
	w.Close()
	wire := stuffed.Bytes()

	b.Run("decode-encode", func(b *testing.B) {
		b.SetBytes(int64(len(msg)))
		b.ReportAllocs()
		out := bufio.NewWriterSize(io.Discard, 4<<10)
		for b.Loop() {
			r := textproto.NewReader(bufio.NewReaderSize(bytes.NewReader(wire), 4<<10)).DotReader()
			dw := textproto.NewWriter(out).DotWriter()
			if _, err := io.Copy(dw, r); err != nil {
				b.Fatal(err)
			}
			dw.Close()
		}
	})
	b.Run("passthrough", func(b *testing.B) {
		b.SetBytes(int64(len(msg)))
		b.ReportAllocs()
		buf := make([]byte, 32<<10)
		for b.Loop() {
			n, err := passData(io.Discard, bytes.NewReader(wire), buf)
			if err != nil || n != int64(len(wire)) {
				b.Fatalf("passData = %d, %v, want %d, nil", n, err, len(wire))
			}
		}
	})
}

// passData copies dot-stuffed message data from r to w unchanged, up to
// and including the end-of-data line "\r\n.\r\n" (the data starts at the
// beginning of a line, so a leading ".\r\n" ends it too). It is a sketch of
// the pass-through the SMTP front would need; it reads ahead of the end
// line only within buf, which a real one must hand back to the command
// reader.
func passData(w io.Writer, r io.Reader, buf []byte) (int64, error) {
	const end = "\r\n.\r\n"
	var total int64
	// tail holds the last bytes written, so that an end line split over
	// two reads is found; it starts as CRLF: the data begins a line.
	tail := make([]byte, 0, 2*len(end))
	tail = append(tail, "\r\n"...)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			// An end line straddling the previous chunk and this one.
			probe := append(tail, chunk[:min(len(chunk), len(end)-1)]...)
			if i := bytes.Index(probe, []byte(end)); i >= 0 {
				cut := i + len(end) - len(tail)
				m, werr := w.Write(chunk[:cut])
				return total + int64(m), werr
			}
			if i := bytes.Index(chunk, []byte(end)); i >= 0 {
				m, werr := w.Write(chunk[:i+len(end)])
				return total + int64(m), werr
			}
			m, werr := w.Write(chunk)
			total += int64(m)
			if werr != nil {
				return total, werr
			}
			// Keep the last len(end)-1 bytes written, over chunk boundaries.
			tail = append(tail, chunk[max(0, len(chunk)-(len(end)-1)):]...)
			tail = tail[:copy(tail, tail[max(0, len(tail)-(len(end)-1)):])]
		}
		if err == io.EOF {
			return total, io.ErrUnexpectedEOF
		}
		if err != nil {
			return total, err
		}
	}
}

func TestPassData(t *testing.T) {
	msg := makeMessage(100<<10, "pass", 'p')
	var stuffed bytes.Buffer
	w := textproto.NewWriter(bufio.NewWriter(&stuffed)).DotWriter()
	w.Write(msg)
	w.Close()
	wire := append(stuffed.Bytes(), "MAIL FROM:<next>\r\n"...)
	want := stuffed.Len()
	// Every read size, so the end line falls across every boundary.
	for _, size := range []int{1, 2, 3, 4, 5, 7, 4096, 32 << 10} {
		var out bytes.Buffer
		n, err := passData(&out, &oneByteReader{b: wire, max: size}, make([]byte, size))
		if err != nil || n != int64(want) || !bytes.Equal(out.Bytes(), wire[:want]) {
			t.Errorf("passData(read size %d) = %d, %v, want %d, nil and the bytes unchanged", size, n, err, want)
		}
	}
}

// oneByteReader returns at most max bytes per Read.
type oneByteReader struct {
	b   []byte
	max int
}

func (r *oneByteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.max)], r.b)
	r.b = r.b[n:]
	return n, nil
}
