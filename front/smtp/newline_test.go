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
