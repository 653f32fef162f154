package smtp

import (
	"bytes"
	"io"
)

// Bare CR and bare LF in message data are written as CRLF before any
// Submitter sees them, on every path (pass-through, spool, Graph).
//
// go-smtp ends DATA only at CRLF "." CRLF, but receivers further on may
// also take "\n.\n", "\r.\r" and the like for the end of the message: a
// message carrying one would end there for them and its remainder would
// be read as new commands (SMTP smuggling, 2023). Turning every bare line
// ending into CRLF makes each such "." a line of its own, which the dot
// stuffer then doubles, so every receiver reads the same message. This is
// Postfix's smtpd_forbid_bare_newline = normalize: old clients that end
// lines with a bare LF keep working; refusing their mail would not help
// anyone.

// crlfReader normalises line endings: "\r\n" stays, a "\r" or "\n" alone
// becomes "\r\n".
type crlfReader struct {
	r      io.Reader
	buf    []byte
	cr     bool // the last byte read was a '\r' whose '\n' has not been seen yet
	out    []byte
	outPos int
	err    error
}

func newCRLFReader(r io.Reader) *crlfReader { return &crlfReader{r: r} }

func (c *crlfReader) Read(p []byte) (int, error) {
	for c.outPos == len(c.out) {
		if c.err != nil {
			if c.cr {
				c.cr = false
				c.out, c.outPos = append(c.out[:0], '\n'), 0
				break
			}
			return 0, c.err
		}
		if cap(c.buf) == 0 {
			c.buf = make([]byte, 32<<10)
		}
		n, err := c.r.Read(c.buf[:cap(c.buf)])
		c.err = err
		c.out, c.outPos = c.normalise(c.out[:0], c.buf[:n]), 0
	}
	n := copy(p, c.out[c.outPos:])
	c.outPos += n
	return n, nil
}

// normalise appends src to dst with bare line endings written as CRLF.
func (c *crlfReader) normalise(dst, src []byte) []byte {
	for len(src) > 0 {
		if c.cr {
			c.cr = false
			dst = append(dst, '\n')
			if src[0] == '\n' {
				src = src[1:]
				continue
			}
		}
		i := bytes.IndexAny(src, "\r\n")
		if i < 0 {
			return append(dst, src...)
		}
		dst = append(dst, src[:i]...)
		if src[i] == '\n' {
			dst = append(dst, '\r', '\n')
		} else {
			dst = append(dst, '\r')
			c.cr = true
		}
		src = src[i+1:]
	}
	return dst
}
