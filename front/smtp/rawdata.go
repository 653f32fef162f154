package smtp

import (
	"bytes"
	"fmt"
	"io"
	"sync"

	"github.com/emersion/go-smtp"
)

// The DATA bypass. go-smtp's server hands Session.Data a reader that undoes
// the dot-stuffing a byte at a time, and with the upstream side writing in
// bulk that reader is most of the proxy's CPU time per message byte. The
// client's bytes are already in the encoding the upstream wants, so when
// our conn sees them in clear (a plain connection, or implicit TLS; not
// after STARTTLS, where go-smtp's TLS sits above our conn) Data reads the
// message from the connection itself and passes well-formed lines on in
// bulk.
//
// This relies on what go-smtp's server (v0.25.1) does, which the tests in
// bypass_test.go check end to end against go-smtp's own reader (recheck
// them when go-smtp is upgraded):
//
//  1. it reads the client through our conn into a bufio.Reader; our conn
//     returns at most one line per Read (conn.lineMode), so once go-smtp
//     has read a command line its buffer is empty;
//  2. for DATA it writes 354 and calls Session.Data before reading more;
//  3. after Data returns it reads its data reader to the end line,
//     discarding, and only then replies.
//
// So Data finds the message's first byte still in our conn or the socket,
// reads up to and including the end line, and puts ".\r\n" back in front
// of whatever the client sent after it: go-smtp's reader then sees an
// empty rest of message, and go-smtp goes on with the next command.
//
// What reaches the upstream is byte for byte what go-smtp's reader
// followed by textproto's DotWriter (dotWriter) make of it. Whole lines
// whose only CR and LF are their CRLF are copied as they are (only a line
// with a single leading dot loses it, as decoding and encoding again
// does); anything else (a bare CR or LF, a line longer than the buffer)
// goes through a byte-at-a-time copy of go-smtp's decoder and then
// dotWriter. Where the data ends, the size limit (in decoded bytes) and
// the line limit follow go-smtp's readers exactly, and a message cut short
// is never finished upstream.

// rawBufferSize is the read buffer of the bypass. Lines longer than this
// (up to maxLineLength) take the byte-at-a-time path.
const rawBufferSize = 32 << 10

var rawPool = sync.Pool{New: func() any { b := make([]byte, rawBufferSize); return &b }}

// rawData is one message read by the bypass.
type rawData struct {
	c     *conn
	bufp  *[]byte
	buf   []byte
	r, w  int   // buf[r:w]: read from the client, not processed yet
	state int   // go-smtp's data reader state after the processed bytes
	run   int   // bytes since the last LF, for the line limit
	n     int64 // decoded bytes of the message
	max   int64 // go-smtp's MaxMessageBytes; 0: no limit (draining)

	done     bool  // the end line was processed
	tooLarge bool  // n reached max: the rest is drained
	tooLong  bool  // a line reached maxLineLength: go-smtp closes the connection
	readErr  error // from the connection; the message is cut short
}

func newRawData(c *conn, max int64) *rawData {
	bp := rawPool.Get().(*[]byte)
	return &rawData{c: c, bufp: bp, buf: *bp, max: max}
}

// err is what the client's side of the message went wrong with, as go-smtp's
// reader would say it.
func (d *rawData) err() error {
	switch {
	case d.tooLong:
		return smtp.ErrTooLongLine
	case d.tooLarge:
		return smtp.ErrDataTooLarge
	case d.readErr == io.EOF:
		return io.ErrUnexpectedEOF
	}
	return d.readErr
}

func (d *rawData) stopped() bool { return d.done || d.tooLarge || d.tooLong }

// copyTo streams the message to ds (nil: discard) up to its end line. It
// returns the decoded bytes, the client-side error and ds's error.
func (d *rawData) copyTo(ds *dataSender) (n int64, rerr, werr error) {
	empty := 0 // reads in a row that returned nothing
	for {
		for d.r < d.w && !d.stopped() {
			if d.state == dataBeginLine {
				if e := bytes.LastIndexByte(d.buf[d.r:d.w], '\n'); e >= 0 {
					if took := d.fast(d.buf[d.r:d.r+e+1], ds); took > 0 {
						d.r += took
						continue
					}
				} else if d.readErr == nil && (d.r > 0 || d.w < len(d.buf)) {
					break // read the rest of the line first
				}
			}
			d.r += d.slow(d.buf[d.r:d.w], ds)
		}
		if ds != nil && ds.err != nil {
			return d.n, nil, ds.err
		}
		if d.stopped() || d.readErr != nil {
			break
		}
		if d.r > 0 {
			d.w = copy(d.buf, d.buf[d.r:d.w])
			d.r = 0
		}
		m, err := d.c.readRaw(d.buf[d.w:])
		d.w += m
		switch {
		case err != nil && m == 0:
			d.readErr = err
		case m == 0:
			if empty++; empty > 100 {
				d.readErr = io.ErrNoProgress
			}
		default:
			empty = 0
		}
	}
	if d.done {
		return d.n, nil, nil
	}
	return d.n, d.err(), nil
}

// fast takes the whole well-formed lines at the start of p, which starts a
// line and ends with LF, up to and including the end line; it returns
// how many bytes it took (0: the first line needs the slow path).
func (d *rawData) fast(p []byte, ds *dataSender) int {
	i := 0
	dots := 0 // lines with a single leading dot, which loses it
	dec := 0  // decoded bytes
	end := -1 // the end line's offset
	for i < len(p) {
		j := i + bytes.IndexByte(p[i:], '\n')
		if j == i || p[j-1] != '\r' || bytes.IndexByte(p[i:j-1], '\r') >= 0 {
			break
		}
		if p[i] == '.' {
			if j == i+2 {
				end = i
				break
			}
			if p[i+1] != '.' {
				dots++
			}
			dec--
		}
		dec += j + 1 - i
		i = j + 1
	}
	if d.max > 0 && d.n+int64(dec) >= d.max {
		// These lines alone make the message too large.
		d.tooLarge = true
		return i
	}
	d.n += int64(dec)
	if ds != nil && i > 0 {
		ds.writeLines(p[:i], dots, dec)
	}
	if end >= 0 {
		d.done = true
		return end + 3
	}
	return i
}

// slow runs go-smtp's data reader over p a byte at a time (and its line
// limit), decoding in place, and encodes the result with dotWriter. It
// stops at the end line, at an error, or after the first CRLF that brings
// it back to the start of a line, where fast can take over.
func (d *rawData) slow(p []byte, ds *dataSender) int {
	k := 0 // decoded bytes are written back into p[:k]
	took := len(p)
	st, run := d.state, d.run
loop:
	for i, c := range p {
		if c == '\n' {
			run = 0
		} else if run++; run >= maxLineLength {
			d.tooLong = true
			took = i
			break
		}
		switch st {
		case dataBeginLine:
			if c == '.' {
				st = dataDot
				continue
			}
			if c == '\r' {
				st = dataCR
			} else {
				st = dataMid
			}
		case dataDot:
			if c == '\r' {
				st = dataDotCR
				continue
			}
			st = dataMid
		case dataDotCR:
			if c == '\n' {
				st = dataEOF
				d.done = true
				took = i + 1
				break loop
			}
			st = dataMid
		case dataCR:
			if c == '\n' {
				st = dataBeginLine
			} else {
				st = dataMid
			}
		case dataMid:
			if c == '\r' {
				st = dataCR
			}
		}
		p[k] = c
		k++
		if d.max > 0 && d.n+int64(k) >= d.max {
			d.tooLarge = true
			took = i + 1
			break
		}
		if st == dataBeginLine {
			took = i + 1
			break
		}
	}
	d.state, d.run = st, run
	d.n += int64(k)
	if ds != nil && k > 0 && !d.tooLarge && !d.tooLong {
		ds.Write(p[:k])
	}
	return took
}

// finish leaves the connection where go-smtp expects it once Data returns:
// it reads the rest of a message that Data did not take (discarding it),
// then puts ".\r\n" and what followed the end line back for go-smtp's
// reader. After a too long line the connection keeps failing, as go-smtp's
// line limit does; after a read error there is nothing left to read.
func (d *rawData) finish() {
	if !d.done && !d.tooLong && d.readErr == nil {
		d.max, d.tooLarge = 0, false
		d.copyTo(nil)
	}
	switch {
	case d.done:
		d.c.unread(append([]byte(".\r\n"), d.buf[d.r:d.w]...))
	case d.tooLong:
		d.c.readFail(smtp.ErrTooLongLine)
	}
	rawPool.Put(d.bufp)
	d.buf, d.bufp = nil, nil
}

// writeLines writes whole well-formed lines as they are, except that a
// line starting with a single dot loses it (dots of them); dec is their
// decoded size.
func (ds *dataSender) writeLines(p []byte, dots, dec int) {
	if ds.err != nil {
		return
	}
	w := ds.buf.w
	seg := 0
	for i := 0; dots > 0 && i < len(p); i += bytes.IndexByte(p[i:], '\n') + 1 {
		if p[i] == '.' && p[i+1] != '.' {
			w.Write(p[seg:i])
			seg = i + 1
			dots--
		}
	}
	// bufio.Writer's errors are sticky: this reports any of the above.
	_, err := w.Write(p[seg:])
	ds.dw.state = dotBeginLine
	ds.n += int64(dec)
	if err != nil {
		ds.err = fmt.Errorf("write message data: %w", err)
	}
}
