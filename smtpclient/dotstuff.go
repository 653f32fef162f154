package smtpclient

import (
	"bufio"
	"bytes"
)

// dotWriter encodes message data for the DATA command a chunk at a time,
// with exactly the output of net/textproto's DotWriter (which go-smtp's
// client uses), without its byte-at-a-time loop:
//
//   - a dot that begins a line is doubled;
//   - a bare LF becomes CRLF; a lone CR is left alone. Like DotWriter, a CR
//     right after a CR does not pair with the LF that follows it, so
//     "\r\r\n" becomes "\r\r\r\n";
//   - close ends the data with CRLF if it does not end with one, then ".\r\n".
//
// So the upstream never sees a line of its own making (no "\n.\n" or
// "\r\n.\n" smuggled through), and what it receives is byte for byte what
// the go-smtp client sent before. Only the insertion points cost a write;
// the rest is found with bytes.IndexByte and copied in bulk.
type dotWriter struct {
	w     *bufio.Writer
	state int
}

// The states of net/textproto's DotWriter, after the bytes written so far.
const (
	dotBegin     = iota // nothing written yet
	dotBeginLine        // after an LF: a dot here must be doubled
	dotCR               // after a CR that may end a line
	dotData             // inside a line
)

func newDotWriter(w *bufio.Writer) *dotWriter { return &dotWriter{w: w} }

// Write encodes p. Errors are those of the bufio.Writer (sticky), and the
// count is all of p or nothing.
func (d *dotWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	w := d.w
	if (d.state == dotBegin || d.state == dotBeginLine) && p[0] == '.' {
		w.WriteByte('.')
	}
	seg := 0 // p[seg:] is not written yet
	for i := 0; ; {
		j := bytes.IndexByte(p[i:], '\n')
		if j < 0 {
			break
		}
		j += i
		if !d.crBefore(p, j) {
			// A bare LF: write CR LF.
			w.Write(p[seg:j])
			w.WriteByte('\r')
			seg = j
		}
		if j+1 < len(p) && p[j+1] == '.' {
			w.Write(p[seg : j+1])
			w.WriteByte('.')
			seg = j + 1
		}
		i = j + 1
	}
	_, err := w.Write(p[seg:])
	switch last := p[len(p)-1]; {
	case last == '\n':
		d.state = dotBeginLine
	case last == '\r' && d.crBefore(p, len(p)):
		d.state = dotCR
	default:
		d.state = dotData
	}
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// crBefore reports whether DotWriter would be in its CR state right
// before p[j] (after all of p when j == len(p)): p[j-1] is a CR that
// began a run of CRs at odd parity. A CR puts DotWriter into that state
// unless it already is in it, so along a run of CRs the state alternates;
// a run that starts p continues from d.state.
func (d *dotWriter) crBefore(p []byte, j int) bool {
	if j == 0 {
		return d.state == dotCR
	}
	if p[j-1] != '\r' {
		return false
	}
	k := j - 1
	for k > 0 && p[k-1] == '\r' {
		k--
	}
	odd := (j-k)%2 == 1
	if k == 0 && d.state == dotCR {
		return !odd
	}
	return odd
}

// close writes the end of the data (the missing CRLF and the final dot
// line) into the buffer; the caller flushes. It must be called only for
// a message that is complete.
func (d *dotWriter) close() error {
	var err error
	switch d.state {
	case dotBeginLine:
		_, err = d.w.WriteString(".\r\n")
	case dotCR:
		_, err = d.w.WriteString("\n.\r\n")
	default: // like DotWriter, an empty message becomes one empty line
		_, err = d.w.WriteString("\r\n.\r\n")
	}
	return err
}
