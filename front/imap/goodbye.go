package imap

import (
	"bytes"
	"math"
	"sync/atomic"

	"mailproxy/relay"
)

// goodbye is what Shutdown uses to end a relayed session with "* BYE":
// relay.Goodbye writes the line, and the session's own relay.SafePoint
// says where it may go. That is where the upstream's stream is between two
// lines and not inside a literal.
//
// To know where that is, it watches the upstream's stream for the one
// thing that matters: a line that ends in a literal announcement ("{n}" or
// "{n+}" before the line ending, as in "* 1 FETCH (BODY[] {1234}\r\n") is
// followed by n bytes of data and then the rest of the line, so the point
// after the line ending is not between lines. That costs a scan for "}"
// over the bytes outside literals; literal data is counted, not scanned.
// Text that merely looks like an announcement at the end of a line (a
// status text ending in "{5}") makes the relay wait for nothing, never
// write too early. Once the client may have sent COMPRESS (RFC 4978), the
// upstream's stream is deflate data and the relay never says goodbye.
type goodbye struct {
	relay.Goodbye
	lit        literalTracker // the upstream direction's
	cmd        compressWatch  // the client direction's
	compressed atomic.Bool    // cmd saw what may be COMPRESS
}

// FromUpstream implements relay.SafePoint.
func (g *goodbye) FromUpstream(b []byte) { g.lit.feed(b) }

// FromClient implements relay.SafePoint. It is called before the client's
// bytes are written, so the upstream's answer to a COMPRESS cannot come
// back before the command was seen.
func (g *goodbye) FromClient(b []byte) {
	if g.cmd.feed(b) {
		g.compressed.Store(true)
	}
}

// Safe implements relay.SafePoint.
func (g *goodbye) Safe() bool { return g.lit.safe() && !g.compressed.Load() }

// Pending implements relay.Streamer: the literal bytes still to come, so
// that the relay gathers a FETCH body that arrives in small TLS records
// (Dovecot's 4 KiB) into large writes. After COMPRESS the stream is
// deflate data and nothing is known.
func (g *goodbye) Pending() int64 {
	if g.compressed.Load() {
		return 0
	}
	return g.lit.lit
}

var _ relay.Streamer = (*goodbye)(nil)

// maxLiteralDigits is the one bound on the size of a literal as both of
// this package's readers of announcements read it, the command parser and
// literalTracker: a size of up to that many digits is read as a number
// (at most 999,999,999,999, so it cannot overflow), a longer one stands
// for a literal too big for every limit.
const maxLiteralDigits = 12

// literalDigits is the size of a literal whose announcement has digits,
// all ASCII digits and at least one: their value, or math.MaxInt64 when
// there are more than maxLiteralDigits of them.
func literalDigits(digits []byte) int64 {
	if len(digits) > maxLiteralDigits {
		return math.MaxInt64
	}
	var n int64
	for _, c := range digits {
		n = n*10 + int64(c-'0')
	}
	return n
}

// litTail keeps enough of a line that an announcement split across reads
// is still seen by literalTracker: "{", the digits, "+", "}" and "\r". An
// announcement with more digits, whatever precedes them, counts as a
// literal that never ends.
const litTail = maxLiteralDigits + 4

// literalTracker follows an IMAP server's stream, chunk by chunk, far
// enough to tell whether the stream is between lines: after a line ending
// that is not inside a literal and does not announce one. It allocates
// nothing. Line endings are LF, with or without CR.
type literalTracker struct {
	lit   int64         // literal bytes still to come
	mid   bool          // within a line: the last byte was not a line ending
	ntail int           // bytes in tail
	tail  [litTail]byte // the last bytes of the line since the line began or the last literal ended
}

// safe reports whether the stream fed so far ends between lines.
func (t *literalTracker) safe() bool { return t.lit == 0 && !t.mid }

// feed follows b, the next bytes of the stream.
func (t *literalTracker) feed(b []byte) {
	for len(b) > 0 {
		if t.lit > 0 {
			if int64(len(b)) <= t.lit {
				t.lit -= int64(len(b))
				return
			}
			// The literal ends in b; its line goes on after it.
			b = b[t.lit:]
			t.lit = 0
			t.ntail = 0
			t.mid = true
			continue
		}
		n, rest, ok := t.announcement(b)
		if !ok {
			t.keep(b)
			t.mid = b[len(b)-1] != '\n'
			return
		}
		t.lit, t.mid, t.ntail, b = n, true, 0, rest
	}
}

// announcement looks in b, which continues the line in t.tail, for the
// first line ending that ends a literal announcement. It returns the
// literal's size and the bytes after the line ending.
func (t *literalTracker) announcement(b []byte) (n int64, rest []byte, ok bool) {
	// A "}" or "}\r" at the end of the previous read.
	if tl := t.tail[:t.ntail]; len(tl) > 0 {
		k := 0 // bytes of b that end the line
		switch {
		case tl[len(tl)-1] == '}':
			if b[0] == '\n' {
				k = 1
			} else if len(b) > 1 && b[0] == '\r' && b[1] == '\n' {
				k = 2
			}
			tl = tl[:len(tl)-1]
		case len(tl) > 1 && tl[len(tl)-2] == '}' && tl[len(tl)-1] == '\r':
			if b[0] == '\n' {
				k = 1
			}
			tl = tl[:len(tl)-2]
		}
		if k > 0 {
			if n, ok := literalSize(tl); ok {
				return n, b[k:], true
			}
		}
	}
	for from := 0; ; {
		j := bytes.IndexByte(b[from:], '}')
		if j < 0 {
			return 0, nil, false
		}
		j += from
		k := 0
		switch {
		case j+1 < len(b) && b[j+1] == '\n':
			k = j + 2
		case j+2 < len(b) && b[j+1] == '\r' && b[j+2] == '\n':
			k = j + 3
		}
		if k > 0 {
			if n, ok := t.sizeBefore(b[:j]); ok {
				return n, b[k:], true
			}
		}
		from = j + 1
	}
}

// sizeBefore parses the announcement that would end with head, the bytes
// of b before a "}", continuing into t.tail.
func (t *literalTracker) sizeBefore(head []byte) (int64, bool) {
	if len(head) >= litTail {
		return literalSize(head[len(head)-litTail:])
	}
	var buf [litTail]byte
	tl := t.tail[:t.ntail]
	if need := litTail - len(head); len(tl) > need {
		tl = tl[len(tl)-need:]
	}
	m := copy(buf[:], tl)
	m += copy(buf[m:], head)
	return literalSize(buf[:m])
}

// keep appends b, line bytes outside literals, to t.tail, dropping the
// oldest bytes.
func (t *literalTracker) keep(b []byte) {
	if len(b) >= litTail {
		t.ntail = copy(t.tail[:], b[len(b)-litTail:])
		return
	}
	if over := t.ntail + len(b) - litTail; over > 0 {
		copy(t.tail[:], t.tail[over:t.ntail])
		t.ntail -= over
	}
	t.ntail += copy(t.tail[t.ntail:], b)
}

// literalSize parses the end of w, the line bytes before a "}", as the
// "{n" or "{n+" of a literal announcement. More than maxLiteralDigits
// digits give math.MaxInt64 (literalDigits).
func literalSize(w []byte) (int64, bool) {
	i := len(w)
	if i > 0 && w[i-1] == '+' {
		i--
	}
	end := i
	for i > 0 && '0' <= w[i-1] && w[i-1] <= '9' {
		i--
		if end-i > maxLiteralDigits {
			return math.MaxInt64, true
		}
	}
	if i == end || i == 0 || w[i-1] != '{' {
		return 0, false
	}
	return literalDigits(w[i:end]), true
}

// compressTail is how much of the client's stream compressWatch keeps:
// enough for "COMPRESS DEFLATE\r\n" and some slack.
const compressTail = 40

// compressWatch looks at the end of each chunk of the client's stream for
// a COMPRESS command (RFC 4978): after its OK the upstream's stream is
// deflate data, in which neither literals nor line boundaries can be
// found. The client must wait for the answer to COMPRESS before it sends
// more, so the command ends what it sent; looking at the last bytes
// suffices. Any "COMPRESS" there counts, in any case, even inside an
// APPEND's data: a session wrongly taken for compressed only loses its
// goodbye.
type compressWatch struct {
	n    int
	tail [compressTail]byte
}

// feed follows b and reports whether the stream so far ends with what
// may be a COMPRESS command.
func (w *compressWatch) feed(b []byte) bool {
	if len(b) >= compressTail {
		w.n = copy(w.tail[:], b[len(b)-compressTail:])
	} else {
		if over := w.n + len(b) - compressTail; over > 0 {
			copy(w.tail[:], w.tail[over:w.n])
			w.n -= over
		}
		w.n += copy(w.tail[w.n:], b)
	}
	return containsFold(w.tail[:w.n], "COMPRESS")
}

// containsFold reports whether b contains upper, an upper-case ASCII
// word, in any case.
func containsFold(b []byte, upper string) bool {
	for i := 0; i+len(upper) <= len(b); i++ {
		j := 0
		for j < len(upper) && b[i+j]&^0x20 == upper[j] {
			j++
		}
		if j == len(upper) {
			return true
		}
	}
	return false
}
