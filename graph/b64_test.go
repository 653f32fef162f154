package graph

import (
	"bytes"
	"encoding/base64"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/emersion/go-message/textproto"
)

func TestBase64Decoder(t *testing.T) {
	var h textproto.Header
	h.Set("Content-Transfer-Encoding", "base64")
	for _, n := range []int{0, 1, 2, 3, 56, 57, 58, 100000, 200003} {
		data := bytes.Repeat([]byte{0, 1, 2, 0xff, 'x', 0x80, 7}, n/7+1)[:n]
		enc := base64.StdEncoding.EncodeToString(data)
		var wrapped strings.Builder
		for i := 0; i < len(enc); i += 76 {
			wrapped.WriteString(enc[i:min(i+76, len(enc))])
			wrapped.WriteString(" \r\n")
		}
		for name, src := range map[string]io.Reader{
			"whole":         strings.NewReader(wrapped.String()),
			"one byte":      iotest.OneByteReader(strings.NewReader(wrapped.String())),
			"no padding":    strings.NewReader(strings.TrimRight(enc, "=")),
			"data at error": iotest.DataErrReader(strings.NewReader(wrapped.String())),
		} {
			got, err := io.ReadAll(decoder(h, src))
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("decode %d bytes (%s) = %d bytes, %v; want them back", n, name, len(got), err)
			}
		}
	}
	if _, err := io.ReadAll(decoder(h, strings.NewReader("QUJD=QUJD"))); err == nil {
		t.Errorf("padding in the middle decoded without an error")
	}
}
