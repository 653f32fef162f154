package smtp

import (
	"bytes"
	"io"
	"testing"
	"testing/iotest"
)

func TestCRLFReader(t *testing.T) {
	for in, want := range map[string]string{
		"":                     "",
		"a\r\nb\r\n":           "a\r\nb\r\n",
		"a\nb\n":               "a\r\nb\r\n",
		"a\rb\r":               "a\r\nb\r\n",
		"\r\r\n\n\r":           "\r\n\r\n\r\n\r\n",
		"x\n.\ny\r.\rz\r\n.\n": "x\r\n.\r\ny\r\n.\r\nz\r\n.\r\n",
	} {
		for name, r := range map[string]io.Reader{
			"whole":    newCRLFReader(bytes.NewReader([]byte(in))),
			"one byte": newCRLFReader(iotest.OneByteReader(bytes.NewReader([]byte(in)))),
		} {
			got, err := io.ReadAll(r)
			if err != nil || string(got) != want {
				t.Errorf("crlfReader(%q) %s = %q, %v; want %q", in, name, got, err, want)
			}
		}
	}
}

// normaliseRef is the rule of crlfReader written the obvious way, a byte
// at a time.
func normaliseRef(in []byte) []byte {
	var out []byte
	for i := 0; i < len(in); i++ {
		switch in[i] {
		case '\r':
			out = append(out, '\r', '\n')
			if i+1 < len(in) && in[i+1] == '\n' {
				i++
			}
		case '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, in[i])
		}
	}
	return out
}

// chunkReader returns its data in reads of the sizes given, round robin.
type chunkReader struct {
	data  []byte
	sizes []int
	i     int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(r.data), r.sizes[r.i%len(r.sizes)])
	r.i++
	copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

// readAllWith reads r to its end with buffers of the sizes given, round
// robin.
func readAllWith(r io.Reader, sizes []int) ([]byte, error) {
	var out []byte
	for i := 0; ; i++ {
		buf := make([]byte, sizes[i%len(sizes)])
		n, err := r.Read(buf)
		out = append(out, buf[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if i > 1<<20 {
			return out, io.ErrNoProgress
		}
	}
}

func FuzzCRLFReader(f *testing.F) {
	f.Add([]byte("a\r\nb\r\n"), uint8(7), uint8(3))
	f.Add([]byte("\r\r\n\n\r"), uint8(1), uint8(1))
	f.Add([]byte("x\n.\ny\r.\rz\r\n.\n"), uint8(2), uint8(5))
	f.Add([]byte("line\r\n\r"), uint8(4), uint8(0))
	f.Fuzz(func(t *testing.T, in []byte, chunk, buf uint8) {
		want := normaliseRef(in)
		sizes := []int{int(chunk%17) + 1, int(chunk%5) + 1, 64}
		bufs := []int{int(buf%40) + 1, int(buf%3) + 1, 4096}
		got, err := readAllWith(newCRLFReader(&chunkReader{data: in, sizes: sizes}), bufs)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("crlfReader(%q) chunks %v bufs %v = %q, %v; want %q", in, sizes, bufs, got, err, want)
		}
	})
}

// TestCRLFReaderLarge mixes clean and bare chunks in a message larger
// than one buffer.
func TestCRLFReaderLarge(t *testing.T) {
	var in []byte
	for i := range 5000 {
		switch i % 97 {
		case 13:
			in = append(in, "bare lf\n"...)
		case 41:
			in = append(in, "bare cr\r"...)
		case 77:
			in = append(in, "\r\r\n\n"...)
		default:
			in = append(in, "a line of text that ends as it should\r\n"...)
		}
	}
	want := normaliseRef(in)
	for _, bufs := range [][]int{{32 << 10}, {4096, 3, 1, 2, 999}, {3}} {
		got, err := readAllWith(newCRLFReader(&chunkReader{data: in, sizes: []int{1 << 20, 1000, 1}}), bufs)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("bufs %v: %d bytes, %v; want %d bytes (first difference at %d)", bufs, len(got), err, len(want), firstDiff(got, want))
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// BenchmarkCRLFReader is the normaliser on message data that has CRLF
// line endings throughout (nearly all mail) and on data with bare LF,
// read 16 KiB at a time as smtpclient reads it.
func BenchmarkCRLFReader(b *testing.B) {
	line := []byte("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n")
	for _, tc := range []struct {
		name string
		line []byte
	}{
		{"crlf", line},
		{"bare-lf", bytes.ReplaceAll(line, []byte("\r\n"), []byte("\n"))},
	} {
		b.Run(tc.name, func(b *testing.B) {
			data := bytes.Repeat(tc.line, (1<<20)/len(tc.line))
			src := bytes.NewReader(data)
			r := newCRLFReader(src)
			buf := make([]byte, 32<<10)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				src.Reset(data)
				*r = crlfReader{r: src}
				for {
					_, err := r.Read(buf)
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
