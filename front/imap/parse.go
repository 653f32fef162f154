package imap

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"slices"
)

// The pre-auth parser. go-imap's wire decoder is internal to that module, and
// the proxy needs very little of the grammar: a tag, a command name and a
// few arguments, which may be atoms, quoted strings, literals ({n} and
// LITERAL+ {n+}) or parentheses (ID takes a list). Everything a command holds
// is appended to one reused buffer; arguments are spans into it, so parsing
// a command allocates nothing once the buffer has grown.

// Fatal parse errors: the connection cannot be resynchronised, the session
// says BYE and closes.
var (
	errLineTooLong   = errors.New("line too long")
	errLiteralTooBig = errors.New("literal too big") // a non-synchronizing literal over the limit
)

// commandError is a malformed command that was read completely: the session
// answers BAD (tagged when the tag was readable) and goes on.
type commandError struct{ msg string }

func (e *commandError) Error() string { return e.msg }

// Preallocated so that rejecting garbage does not allocate either.
var (
	errNoTag           = &commandError{"missing or invalid tag"}
	errNoCommand       = &commandError{"missing command name"}
	errBadChar         = &commandError{"invalid character in command"}
	errUnterminated    = &commandError{"unterminated quoted string"}
	errBadEscape       = &commandError{"invalid escape in quoted string"}
	errNUL             = &commandError{"NUL byte in argument"}
	errBadLiteral      = &commandError{"invalid literal"}
	errSyncLiteralBig  = &commandError{"literal too big"}
	errTooManyArgs     = &commandError{"too many arguments"}
	errLiteralNotFinal = &commandError{"literal must end the line"}
)

// maxArgs bounds the arguments of one command; ID may carry up to 30
// field/value pairs plus its parentheses.
const maxArgs = 64

type argKind uint8

const (
	argAtom   argKind = iota
	argString         // quoted string or literal, unescaped
	argLParen
	argRParen
)

// span is a byte range of parser.buf.
type span struct{ start, end int }

type arg struct {
	kind argKind
	span
}

// parser reads one command at a time from r. w receives the "+" continuation
// request of synchronizing literals.
type parser struct {
	r          *bufio.Reader
	w          *bufio.Writer
	maxLine    int // bytes of command text per command, literals excluded
	maxLiteral int // literal bytes per command

	buf       []byte
	tag, name span
	args      []arg
	lineBytes int
	litBytes  int
	overTail  []byte // the end of the fragment that passed maxLine
	overEnded bool   // ... and whether it ended its line
}

// Byte classes.
var (
	atomChars [256]bool // lenient ASTRING-CHAR: anything but SP, CTL, ( ) "
	tagChars  [256]bool // ASCII atom characters except + * % \ {
)

func init() {
	for c := 0x21; c < 0x100; c++ {
		if c == 0x7f || c == '(' || c == ')' || c == '"' {
			continue
		}
		atomChars[c] = true
		if c < 0x80 && c != '+' && c != '*' && c != '%' && c != '\\' && c != '{' {
			tagChars[c] = true
		}
	}
}

func (p *parser) bytes(s span) []byte { return p.buf[s.start:s.end] }

// readCommand reads the next command. It returns nil, a *commandError (the
// command was consumed and is malformed; p.tag is set when it was readable),
// errLineTooLong, errLiteralTooBig, or a read error.
func (p *parser) readCommand() error {
	p.buf = p.buf[:0]
	p.args = p.args[:0]
	p.tag, p.name = span{}, span{}
	p.lineBytes, p.litBytes = 0, 0

	var bad *commandError
	first := true
	for {
		start := len(p.buf)
		if err := p.readLine(first); err != nil {
			if err == errLineTooLong && bad == nil {
				return p.skipCommand(start, first)
			}
			return err
		}
		if bad == nil {
			n, sync, lit, err := p.scan(start, first)
			first = false
			if err != nil {
				ce, ok := err.(*commandError)
				if !ok {
					return err
				}
				bad = ce
			} else if !lit {
				return nil
			} else {
				if err := p.readLiteral(n, sync); err != nil {
					return err
				}
				if bytes.IndexByte(p.bytes(p.args[len(p.args)-1].span), 0) >= 0 {
					bad = errNUL
				}
				continue
			}
		}
		// Resynchronise after an error: a line ending in a non-synchronizing
		// literal continues the command; a synchronizing one ends it, since
		// the client waits for a "+" it will not get.
		n, sync, ok := trailingLiteral(p.buf[start:])
		if !ok || sync {
			return bad
		}
		if n > int64(p.maxLiteral-p.litBytes) {
			return errLiteralTooBig
		}
		if _, err := p.r.Discard(int(n)); err != nil {
			return noEOF(err)
		}
		// The lines read so far stay in buf: the tag (for the BAD reply)
		// and the arguments point into them. maxLine bounds them all.
		p.litBytes += int(n)
	}
}

// maxSkip bounds how much of an over-long command is read and thrown away
// to find its end; beyond it the connection is closed.
const maxSkip = 1 << 20

// errCommandTooLong is the BAD of a command whose text passed maxLine: it
// was skipped to its end, so the next line is a new command.
var errCommandTooLong = &commandError{"command line too long"}

// skipCommand is called when the line starting at p.buf[start:] passed
// maxLine. It throws the rest of the command away, literals included, so
// that the client's next command is read in step: a synchronizing literal
// ends the command (the client waits for a "+" that never comes and gets
// the BAD instead), a non-synchronizing one is skipped. It returns
// errCommandTooLong (with the tag set when it was readable), or
// errLineTooLong / errLiteralTooBig / a read error when the stream cannot
// be resynchronised within maxSkip.
func (p *parser) skipCommand(start int, first bool) error {
	if first {
		i := start
		for i < len(p.buf) && tagChars[p.buf[i]] {
			i++
		}
		if i > start && i < len(p.buf) && p.buf[i] == ' ' {
			p.tag = span{start, i}
		}
	}
	budget := maxSkip
	tail := p.overTail // the last bytes of the line, for a trailing literal
	ended := p.overEnded
	for {
		if !ended {
			frag, err := p.r.ReadSlice('\n')
			budget -= len(frag)
			if budget < 0 {
				return errLineTooLong
			}
			tail = append(tail, frag...)
			if len(tail) > 32 {
				tail = append(tail[:0], tail[len(tail)-32:]...)
			}
			if err == bufio.ErrBufferFull {
				continue
			}
			if err != nil {
				return noEOF(err)
			}
		}
		ended = false
		line := bytes.TrimSuffix(bytes.TrimSuffix(tail, []byte("\n")), []byte("\r"))
		n, sync, ok := trailingLiteral(line)
		if !ok || sync {
			return errCommandTooLong
		}
		if n > int64(p.maxLiteral) || n > int64(budget) {
			return errLiteralTooBig
		}
		if _, err := p.r.Discard(int(n)); err != nil {
			return noEOF(err)
		}
		budget -= int(n)
		tail = tail[:0]
	}
}

// readLine appends one line, without its line ending, to p.buf. A bare LF is
// accepted as a line ending.
func (p *parser) readLine(first bool) error {
	start := len(p.buf)
	for {
		frag, err := p.r.ReadSlice('\n')
		p.lineBytes += len(frag)
		if p.lineBytes > p.maxLine {
			// What skipCommand needs to find the command's end.
			p.overTail = append(p.overTail[:0], frag[max(0, len(frag)-32):]...)
			p.overEnded = err == nil
			return errLineTooLong
		}
		p.buf = append(p.buf, frag...)
		if err == nil {
			break
		}
		if err != bufio.ErrBufferFull {
			if err == io.EOF && (!first || len(p.buf) > start) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	p.buf = p.buf[:len(p.buf)-1]
	if len(p.buf) > start && p.buf[len(p.buf)-1] == '\r' {
		p.buf = p.buf[:len(p.buf)-1]
	}
	return nil
}

// readContinuation reads one line of a SASL exchange, bounded like a command
// line. The result is valid until the next read.
func (p *parser) readContinuation() ([]byte, error) {
	p.lineBytes = 0
	start := len(p.buf)
	if err := p.readLine(false); err != nil {
		return nil, err
	}
	return p.buf[start:], nil
}

// readLiteral reads a literal of n bytes (already checked against the limit)
// as a string argument.
func (p *parser) readLiteral(n int64, sync bool) error {
	if sync {
		if _, err := p.w.WriteString("+ Ready for literal data\r\n"); err != nil {
			return err
		}
		if err := p.w.Flush(); err != nil {
			return err
		}
	}
	start := len(p.buf)
	p.buf = slices.Grow(p.buf, int(n))[:start+int(n)]
	if _, err := io.ReadFull(p.r, p.buf[start:]); err != nil {
		return noEOF(err)
	}
	p.litBytes += int(n)
	p.args = append(p.args, arg{argString, span{start, len(p.buf)}})
	return nil
}

// scan tokenizes the line p.buf[pos:]: on the first line of a command its
// tag and name, then the arguments. When the line ends with a literal
// announcement it returns its size and kind; the literal is not read yet.
func (p *parser) scan(pos int, first bool) (n int64, sync, lit bool, err error) {
	if first {
		if pos, err = p.scanHead(pos); err != nil {
			return 0, false, false, err
		}
	}
	buf := p.buf
	end := len(buf)
	for {
		for pos < end && buf[pos] == ' ' {
			pos++
		}
		if pos == end {
			return 0, false, false, nil
		}
		if len(p.args) >= maxArgs {
			return 0, false, false, errTooManyArgs
		}
		switch c := buf[pos]; c {
		case '"':
			if pos, err = p.scanQuoted(pos); err != nil {
				return 0, false, false, err
			}
		case '{':
			n, sync, err := p.scanLiteral(pos)
			if err != nil {
				return 0, false, false, err
			}
			return n, sync, true, nil
		case '(':
			p.args = append(p.args, arg{argLParen, span{pos, pos + 1}})
			pos++
		case ')':
			p.args = append(p.args, arg{argRParen, span{pos, pos + 1}})
			pos++
		default:
			i := pos
			for i < end && atomChars[buf[i]] {
				i++
			}
			if i == pos {
				return 0, false, false, errBadChar
			}
			p.args = append(p.args, arg{argAtom, span{pos, i}})
			pos = i
		}
	}
}

// scanHead reads the tag and the command name (upper-cased in place) at
// p.buf[pos:] and returns the position after the name.
func (p *parser) scanHead(pos int) (int, error) {
	buf := p.buf
	end := len(buf)
	i := pos
	for i < end && tagChars[buf[i]] {
		i++
	}
	if i == pos || (i < end && buf[i] != ' ') {
		return 0, errNoTag
	}
	p.tag = span{pos, i}
	pos = i
	for pos < end && buf[pos] == ' ' {
		pos++
	}
	i = pos
	for i < end && atomChars[buf[i]] && buf[i] != '{' {
		if c := buf[i]; 'a' <= c && c <= 'z' {
			buf[i] = c - 'a' + 'A'
		}
		i++
	}
	if i == pos {
		return 0, errNoCommand
	}
	p.name = span{pos, i}
	return i, nil
}

// scanQuoted reads the quoted string at p.buf[pos] (the opening quote),
// unescaping it in place (the result is never longer than the input), and
// returns the position after the closing quote.
func (p *parser) scanQuoted(pos int) (int, error) {
	buf := p.buf
	end := len(buf)
	w := pos + 1
	start := w
	i := pos + 1
	for {
		if i == end {
			return 0, errUnterminated
		}
		c := buf[i]
		if c == '"' {
			break
		}
		switch c {
		case 0:
			return 0, errNUL
		case '\r':
			return 0, errBadChar
		case '\\':
			i++
			if i == end || (buf[i] != '"' && buf[i] != '\\') {
				return 0, errBadEscape
			}
			c = buf[i]
		}
		buf[w] = c
		w++
		i++
	}
	p.args = append(p.args, arg{argString, span{start, w}})
	return i + 1, nil
}

// scanLiteral checks the literal announcement at p.buf[pos] (its '{'),
// which must end the line and fit the command's literal budget, and cuts
// it from p.buf: the literal's data replaces it.
func (p *parser) scanLiteral(pos int) (n int64, sync bool, err error) {
	buf := p.buf
	n, sync, ok := literalSpec(buf[pos:])
	if !ok {
		if j := bytes.IndexByte(buf[pos:], '}'); j >= 0 {
			if _, _, ok := literalSpec(buf[pos : pos+j+1]); ok {
				return 0, false, errLiteralNotFinal
			}
		}
		return 0, false, errBadLiteral
	}
	if n > int64(p.maxLiteral-p.litBytes) {
		if !sync {
			// The client sends the data whatever we say: we
			// cannot skip it without reading it.
			return 0, false, errLiteralTooBig
		}
		return 0, false, errSyncLiteralBig
	}
	p.buf = buf[:pos] // the literal's data replaces its announcement
	return n, sync, nil
}

// trailingLiteral reports whether line ends with a literal announcement.
func trailingLiteral(line []byte) (n int64, sync, ok bool) {
	i := bytes.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false, false
	}
	return literalSpec(line[i:])
}

// literalSpec parses b as exactly "{n}" or "{n+}". Sizes of more than 12
// digits are reported as the maximum int64 so that they fail every limit.
func literalSpec(b []byte) (n int64, sync, ok bool) {
	end := len(b)
	if end < 3 || b[0] != '{' || b[end-1] != '}' {
		return 0, false, false
	}
	end--
	sync = true
	if b[end-1] == '+' {
		sync = false
		end--
	}
	digits := b[1:end]
	if len(digits) == 0 {
		return 0, false, false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false, false
		}
	}
	return literalDigits(digits), sync, true // the one literal-size rule (goodbye.go)
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
