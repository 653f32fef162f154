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
// becomes "\r\n". It works in the caller's buffer and allocates nothing:
// a chunk is read into at most half of it, so that its normalised form
// (at most twice as long, plus one LF owed by the chunk before) fits.
// Chunks whose every line ends in CRLF, which is nearly all mail, are
// handed on as they were read; the others are moved to the end of the
// buffer and normalised forward into its start.
type crlfReader struct {
	r   io.Reader
	cr  bool // the last byte handed on was a '\r' whose '\n' has not been seen yet
	err error
	// pend holds output that did not fit a caller's buffer of fewer than
	// three bytes.
	pend    []byte
	pendBuf [3]byte
}

func newCRLFReader(r io.Reader) *crlfReader { return &crlfReader{r: r} }

func (c *crlfReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(c.pend) > 0 {
		n := copy(p, c.pend)
		c.pend = c.pend[n:]
		return n, nil
	}
	for {
		if c.err != nil {
			if c.cr {
				// A '\r' ended the data.
				c.cr = false
				p[0] = '\n'
				return 1, nil
			}
			return 0, c.err
		}
		var n int
		if len(p) < 3 {
			n = c.readSmall(p)
		} else {
			n = c.readChunk(p)
		}
		if n > 0 {
			return n, nil
		}
	}
}

// readChunk reads one chunk into p, which has room for at least three
// bytes, and normalises it there.
func (c *crlfReader) readChunk(p []byte) int {
	k := (len(p) - 1) / 2
	n, err := c.r.Read(p[:k])
	c.err = err
	src := p[:n]
	if n == 0 || c.clean(src) {
		if n > 0 {
			c.cr = src[n-1] == '\r'
		}
		return n
	}
	// Writing from the start of p never overtakes the bytes still to be
	// read from its end: after i input bytes at most 2i+1 are written,
	// and the input starts at len(p)-n >= 2n+1 - n.
	tail := p[len(p)-n:]
	copy(tail, src)
	return len(c.normalise(p[:0], tail))
}

// readSmall serves a buffer of one or two bytes through pend.
func (c *crlfReader) readSmall(p []byte) int {
	var b [1]byte
	n, err := c.r.Read(b[:])
	c.err = err
	if n == 0 {
		return 0
	}
	out := c.normalise(c.pendBuf[:0], b[:n])
	m := copy(p, out)
	c.pend = out[m:]
	return m
}

// clean reports whether src, read after the bytes already handed on, has
// no bare line ending: every LF follows a CR, and every CR is followed by
// an LF (a last CR waits for the next chunk).
func (c *crlfReader) clean(src []byte) bool {
	if c.cr && src[0] != '\n' {
		return false
	}
	paired := 0
	for i := 0; ; {
		j := bytes.IndexByte(src[i:], '\n')
		if j < 0 {
			break
		}
		j += i
		switch {
		case j > 0 && src[j-1] == '\r':
			paired++ // its CR is in src
		case j > 0 || !c.cr:
			return false // a bare LF
		}
		i = j + 1
	}
	crs := bytes.Count(src, []byte{'\r'})
	if src[len(src)-1] == '\r' {
		crs--
	}
	// Each paired LF claims the CR right before it; any other CR is bare.
	return crs == paired
}

// normalise appends src to dst with bare line endings written as CRLF.
// dst may share memory with src when it starts at least len(src)+1
// bytes before it (see readChunk).
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
		i := indexLineEnd(src)
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

// indexLineEnd is bytes.IndexAny(b, "\r\n") with two IndexByte scans,
// which are vectorised where IndexAny is a loop over the bytes.
func indexLineEnd(b []byte) int {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return bytes.IndexByte(b, '\r')
	}
	if j := bytes.IndexByte(b[:i], '\r'); j >= 0 {
		return j
	}
	return i
}
