package smtp

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// The protocol trace (Server.Trace). The upstream side traces itself
// (upstream.traceLine). The client side comes from go-smtp's Server.Debug,
// which receives every chunk go-smtp reads from the client and every line
// it writes back, as they are: frontTrace turns that stream into one trace
// line per command and reply, without message data and without
// credentials.
//
// Debug has no per-connection identity, so a traced connection gets a
// go-smtp server of its own (Server.serveTraced); and Debug does not say
// which way the bytes went, so frontTrace tells: go-smtp writes a reply to
// the connection (through our conn, under TLS or not) just before it hands
// the same bytes to Debug, so a Debug call that follows a write to our
// conn and holds only reply lines ("ddd text" or "ddd-text") is a reply.
// Anything else is client input. The reply check also catches the writes
// go-smtp does not hand to Debug (TLS handshake records, a TLS key update
// answered during a read): client input never takes the reply form unless
// the client writes it so, and a credential never does (base64 has no
// space or dash).
//
// Client input is read as go-smtp reads it. What a line means can depend
// on the reply to the one before (after AUTH, lines are SASL responses
// while the server answers 334; after DATA, message data follows only a
// 354; after STARTTLS and 220, what was buffered is dropped), and clients
// pipeline: so input after AUTH, DATA and STARTTLS waits until the reply
// to them is seen. go-smtp answers every line it reads (and a message's
// data) with one reply, in order, so counting the replies still owed
// tells which reply is the awaited one.

// Trace directions.
const (
	dirClientIn    = "client->proxy"
	dirClientOut   = "proxy->client"
	dirUpstreamOut = "proxy->upstream"
	dirUpstreamIn  = "upstream->proxy"
)

// States of the client input.
const (
	inCommand = iota // a command line comes next
	inWait           // hold input until the reply to the last command
	inSASL           // a SASL response line comes next (after a 334)
	inData           // DATA content, up to its end line
	inChunk          // a BDAT chunk of chunkLeft bytes
)

// What the reply awaited in inWait decides.
const (
	waitAuth = iota
	waitData
	waitTLS
)

// maxTraceBuffer bounds held client input; go-smtp refuses longer lines.
const maxTraceBuffer = 2*maxLineLength + 4096

type frontTrace struct {
	c *conn

	mu        sync.Mutex // protects the fields below
	seen      uint64     // c.writes at the last Write
	in        []byte     // client input not traced yet
	out       []byte     // a reply line not complete yet
	state     int
	wait      int
	owed      int   // replies go-smtp owes for the input traced so far
	dataState int   // go-smtp's dataReader state, in inData
	count     int64 // bytes of message data so far (inData, inChunk)
	chunkLeft int64 // inChunk
}

func newFrontTrace(c *conn) *frontTrace { return &frontTrace{c: c} }

// Write takes what go-smtp hands to Server.Debug. It never fails: an error
// would end the connection.
func (f *frontTrace) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.c.writes.Load()
	wrote := w != f.seen
	f.seen = w
	if wrote && isReplyChunk(f.out, p) {
		f.replies(p)
	} else {
		f.input(p)
	}
	return len(p), nil
}

// isReplyChunk reports whether p, following the partial reply line out,
// holds reply lines only.
func isReplyChunk(out, p []byte) bool {
	if len(out) > 0 {
		return true // the rest of a long reply line
	}
	for len(p) > 0 {
		line, rest, _ := bytes.Cut(p, []byte("\n"))
		if _, ok := replyCode(string(bytes.TrimSuffix(line, []byte("\r")))); !ok {
			return false
		}
		p = rest
	}
	return true
}

func (f *frontTrace) log(dir, line string) {
	f.c.trace.Debug("smtp trace", "dir", dir, "line", line)
}

// replies traces go-smtp's reply lines and lets them move the input state.
func (f *frontTrace) replies(p []byte) {
	f.out = append(f.out, p...)
	for {
		i := bytes.IndexByte(f.out, '\n')
		if i < 0 {
			if len(f.out) > maxTraceBuffer {
				f.log(dirClientOut, fmt.Sprintf("<reply line of more than %d bytes>", maxTraceBuffer))
				f.out = f.out[:0]
			}
			return
		}
		line := string(bytes.TrimSuffix(f.out[:i], []byte("\r")))
		f.out = f.out[:copy(f.out, f.out[i+1:])]
		f.reply(line)
	}
}

func (f *frontTrace) reply(line string) {
	f.log(dirClientOut, line)
	code, ok := replyCode(line)
	if !ok || (len(line) > 3 && line[3] == '-') {
		return
	}
	if f.owed > 0 {
		f.owed--
	}
	if f.state != inWait || f.owed > 0 {
		return
	}
	f.state = inCommand
	switch f.wait {
	case waitAuth:
		if code == 334 {
			f.state = inSASL
		}
	case waitData:
		if code == 354 {
			// The data gets its own reply.
			f.state, f.dataState, f.count = inData, 0, 0
			f.owed++
		}
	case waitTLS:
		if code == 220 && len(f.in) > 0 {
			// go-smtp drops what it buffered before the handshake.
			f.log(dirClientIn, fmt.Sprintf("<%d bytes sent before TLS, ignored>", len(f.in)))
			f.in = f.in[:0]
		}
	}
	f.process()
}

func (f *frontTrace) input(p []byte) {
	f.in = append(f.in, p...)
	f.process()
	if len(f.in) > maxTraceBuffer {
		f.log(dirClientIn, fmt.Sprintf("<%d bytes not traced>", len(f.in)))
		f.in = f.in[:0]
	}
}

// process traces the held input as far as the state allows.
func (f *frontTrace) process() {
	for len(f.in) > 0 {
		switch f.state {
		case inWait:
			return
		case inData:
			n := f.dataEnd(f.in)
			f.count += int64(n)
			f.consume(n)
			if f.dataState != dataEOF {
				return
			}
			f.log(dirClientIn, fmt.Sprintf("DATA: %d bytes", f.count-int64(len(".\r\n"))))
			f.log(dirClientIn, ".")
			f.state = inCommand
		case inChunk:
			n := int(min(f.chunkLeft, int64(len(f.in))))
			f.chunkLeft -= int64(n)
			f.count += int64(n)
			f.consume(n)
			if f.chunkLeft > 0 {
				return
			}
			f.log(dirClientIn, fmt.Sprintf("BDAT chunk: %d bytes", f.count))
			f.state = inCommand
		default:
			i := bytes.IndexByte(f.in, '\n')
			if i < 0 {
				return
			}
			line := string(bytes.TrimSuffix(f.in[:i], []byte("\r")))
			f.consume(i + 1)
			f.owed++
			if f.state == inSASL {
				f.sasl(line)
			} else {
				f.command(line)
			}
		}
	}
}

func (f *frontTrace) consume(n int) { f.in = f.in[:copy(f.in, f.in[n:])] }

// sasl traces a line sent after a 334: a credential, or "*" to cancel.
func (f *frontTrace) sasl(line string) {
	if line == "*" {
		f.log(dirClientIn, line)
	} else {
		f.log(dirClientIn, redacted)
	}
	f.state, f.wait = inWait, waitAuth
}

// knownMechs are the SASL mechanism names the trace shows; any other word
// after AUTH could be a confused client's credential.
var knownMechs = map[string]bool{
	"PLAIN": true, "LOGIN": true, "XOAUTH2": true, "OAUTHBEARER": true,
	"CRAM-MD5": true, "DIGEST-MD5": true, "NTLM": true, "GSSAPI": true, "ANONYMOUS": true, "EXTERNAL": true,
}

// shownCommands are traced with their arguments. An unknown line is
// traced by its length only: it could be a credential a client sent at the
// wrong time.
var shownCommands = map[string]bool{
	"EHLO": true, "HELO": true, "LHLO": true, "MAIL": true, "RCPT": true, "RSET": true, "NOOP": true,
	"QUIT": true, "VRFY": true, "EXPN": true, "HELP": true, "SEND": true, "SOML": true, "SAML": true,
	"TURN": true,
}

func (f *frontTrace) command(line string) {
	verb, args, _ := strings.Cut(line, " ")
	switch verb = strings.ToUpper(verb); {
	case verb == "AUTH":
		shown := "AUTH"
		fields := strings.Fields(args)
		if len(fields) > 0 {
			if mech := strings.ToUpper(fields[0]); knownMechs[mech] {
				shown += " " + mech
			} else {
				shown += " " + redacted
			}
		}
		if len(fields) > 1 {
			shown += " " + redacted
		}
		f.log(dirClientIn, shown)
		f.state, f.wait = inWait, waitAuth
	case verb == "DATA":
		f.log(dirClientIn, line)
		f.state, f.wait = inWait, waitData
	case verb == "STARTTLS":
		f.log(dirClientIn, line)
		f.state, f.wait = inWait, waitTLS
	case verb == "BDAT":
		f.log(dirClientIn, line)
		if size, ok := bdatSize(args); ok {
			f.state, f.chunkLeft, f.count = inChunk, size, 0
			if size == 0 {
				f.state = inCommand
			}
		}
	case shownCommands[verb]:
		f.log(dirClientIn, line)
	default:
		f.log(dirClientIn, fmt.Sprintf("<unrecognized command line of %d bytes>", len(line)))
	}
}

// bdatSize says whether go-smtp reads a chunk after this BDAT command, and
// its size: its arguments parse (then the chunk is read even when the
// command is refused).
func bdatSize(args string) (int64, bool) {
	f := strings.Fields(args)
	if len(f) == 0 || len(f) > 2 || (len(f) == 2 && !strings.EqualFold(f[1], "LAST")) {
		return 0, false
	}
	n, err := strconv.ParseUint(f[0], 10, 32)
	if err != nil {
		return 0, false
	}
	return int64(n), true
}

// The states of go-smtp's dataReader, which dataEnd follows exactly so
// that the trace ends the data where go-smtp does.
const (
	dataBeginLine = iota
	dataDot
	dataDotCR
	dataCR
	dataMid
	dataEOF
)

// dataEnd runs go-smtp's end-of-data state machine over p and returns the
// bytes it takes: all of p, or up to and including the end line.
func (f *frontTrace) dataEnd(p []byte) int {
	s := f.dataState
	for i, c := range p {
		switch s {
		case dataBeginLine:
			switch c {
			case '.':
				s = dataDot
			case '\r':
				s = dataCR
			default:
				s = dataMid
			}
		case dataDot:
			if c == '\r' {
				s = dataDotCR
			} else {
				s = dataMid
			}
		case dataDotCR:
			if c == '\n' {
				f.dataState = dataEOF
				return i + 1
			}
			s = dataMid
		case dataCR:
			if c == '\n' {
				s = dataBeginLine
			} else {
				s = dataMid
			}
		case dataMid:
			if c == '\r' {
				s = dataCR
			}
		}
	}
	f.dataState = s
	return len(p)
}

// note traces a reply the front writes itself, past go-smtp.
func (c *conn) note(dir, line string) {
	if c.trace != nil {
		c.trace.Debug("smtp trace", "dir", dir, "line", line)
	}
}
