package smtp

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// The upstream side is a small SMTP client of our own rather than
// go-smtp's: go-smtp's client can only take message data through
// net/textproto's DotWriter, which dot-stuffs a byte at a time (a third of
// the proxy's CPU time per message byte). This one writes the data through
// dotWriter into a large pooled buffer, and keeps per-command control:
// every client command still maps to one upstream command and reply.

const (
	readBufferSize = 4096     // replies; a longer reply line is refused (RFC 5321 allows 512 bytes)
	maxReplyLines  = 100      // lines in one reply (an EHLO reply has about 15)
	dataBufferSize = 32 << 10 // write buffer of the DATA phase, and its copy buffer
	redacted       = "<redacted>"
)

// upstream is one connection to the provider's submission server, used
// for every transaction of one client session. Its methods are called
// with the session's mu held.
type upClient struct {
	conn    net.Conn // commands and data: TLS over raw
	raw     net.Conn // the TCP connection, for deadlines and abort
	r       *bufio.Reader
	ext     map[string]string // EHLO keywords (upper case) and their parameters
	timeout time.Duration     // bounds each command and its reply
	used    bool              // a transaction ran on it: it may have gone stale while idle
	trace   *slog.Logger      // protocol trace; nil: off
	line    []byte            // reused for each command line
}

func newUpstream(conn, raw net.Conn, trace *slog.Logger) *upClient {
	return &upClient{conn: conn, raw: raw, r: bufio.NewReaderSize(conn, readBufferSize), trace: trace}
}

// reply is one SMTP reply: its code and the text of each line.
type reply struct {
	code  int
	lines []string
}

func (r reply) text() string { return strings.Join(r.lines, "\n") }

// err describes a reply that is not the one the command wanted: a 4xx or
// 5xx as *smtp.SMTPError (go-smtp's form: the enhanced code of the first
// line parsed, its repetitions on later lines removed), anything else as a
// protocol error.
func (r reply) err() error {
	if r.code < 400 {
		return fmt.Errorf("unexpected reply %d %s", r.code, truncate(oneLine(r.text()), 100))
	}
	se := &smtp.SMTPError{Code: r.code, Message: r.text()}
	if ec, rest := parseStatus(se.Message); ec != smtp.EnhancedCodeNotSet {
		first, _, _ := strings.Cut(se.Message, " ")
		se.EnhancedCode = ec
		se.Message = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
	}
	return se
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

func (u *upClient) traceLine(dir, line string) {
	if u.trace != nil {
		u.trace.Debug("smtp trace", "dir", dir, "line", line)
	}
}

// setConn switches to conn (TLS after STARTTLS), dropping the read buffer.
func (u *upClient) setConn(conn net.Conn) {
	u.conn = conn
	u.r = bufio.NewReaderSize(conn, readBufferSize)
}

// readReply reads one reply, possibly of several lines.
func (u *upClient) readReply() (reply, error) {
	var rep reply
	for {
		b, err := u.r.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return reply{}, errors.New("reply line too long")
			}
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return reply{}, fmt.Errorf("read reply: %w", err)
		}
		line := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
		u.traceLine(dirUpstreamIn, line)
		code, ok := replyCode(line)
		if !ok || (rep.lines != nil && code != rep.code) {
			return reply{}, fmt.Errorf("malformed reply line %q", truncate(line, 100))
		}
		rep.code = code
		if len(line) > 4 {
			rep.lines = append(rep.lines, line[4:])
		} else {
			rep.lines = append(rep.lines, "")
		}
		if len(line) == 3 || line[3] == ' ' {
			return rep, nil
		}
		if len(rep.lines) >= maxReplyLines {
			return reply{}, fmt.Errorf("reply of more than %d lines", maxReplyLines)
		}
	}
}

// replyCode parses "ddd", "ddd text" or "ddd-text".
func replyCode(line string) (int, bool) {
	if len(line) < 3 || (len(line) > 3 && line[3] != ' ' && line[3] != '-') {
		return 0, false
	}
	if line[0] < '1' || line[0] > '5' || line[1] < '0' || line[1] > '9' || line[2] < '0' || line[2] > '9' {
		return 0, false
	}
	return int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0'), true
}

// cmd sends one command line and reads its reply, both within u.timeout.
func (u *upClient) cmd(line string) (reply, error) { return u.cmdShown(line, line) }

// cmdShown is cmd with another text in the trace: the command hides a
// credential.
func (u *upClient) cmdShown(line, shown string) (reply, error) {
	if strings.ContainsAny(line, "\r\n") {
		// go-smtp's server never passes one on; refuse rather than inject.
		return reply{}, errors.New("command line holds CR or LF")
	}
	u.raw.SetDeadline(time.Now().Add(u.timeout))
	u.traceLine(dirUpstreamOut, shown)
	u.line = append(append(u.line[:0], line...), '\r', '\n')
	if _, err := u.conn.Write(u.line); err != nil {
		return reply{}, fmt.Errorf("write command: %w", err)
	}
	return u.readReply()
}

// ok2xx returns nil for a 2xx reply, else what err says.
func ok2xx(rep reply, err error) error {
	if err != nil {
		return err
	}
	if rep.code/100 != 2 {
		return rep.err()
	}
	return nil
}

// hello reads the greeting and says EHLO; with tlsConfig it then runs
// STARTTLS and says EHLO again. The caller bounds it with a context that
// closes raw.
func (u *upClient) hello(ctx context.Context, domain string, tlsConfig *tls.Config) error {
	u.raw.SetDeadline(time.Now().Add(u.timeout))
	rep, err := u.readReply()
	if err == nil && rep.code != 220 {
		err = rep.err()
	}
	if err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if err := u.ehlo(domain); err != nil {
		return err
	}
	if tlsConfig == nil {
		return nil
	}
	if _, ok := u.ext["STARTTLS"]; !ok {
		return errors.New("server does not offer STARTTLS")
	}
	rep, err = u.cmd("STARTTLS")
	if err == nil && rep.code != 220 {
		err = rep.err()
	}
	if err != nil {
		return fmt.Errorf("STARTTLS: %w", err)
	}
	if u.r.Buffered() > 0 {
		// Plain text after the 220 would be read as if it came over TLS.
		return errors.New("STARTTLS: server sent data after its 220 reply")
	}
	tc := tls.Client(u.raw, tlsConfig)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	u.traceLine(dirUpstreamOut, "<TLS handshake done>")
	u.setConn(tc)
	return u.ehlo(domain)
}

func (u *upClient) ehlo(domain string) error {
	rep, err := u.cmd("EHLO " + domain)
	if err == nil && rep.code != 250 {
		err = rep.err()
	}
	if err != nil {
		return fmt.Errorf("EHLO: %w", err)
	}
	u.ext = make(map[string]string, len(rep.lines))
	for _, l := range rep.lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		u.ext[strings.ToUpper(k)] = v
	}
	return nil
}

func (u *upClient) has(ext string) bool {
	_, ok := u.ext[ext]
	return ok
}

// authXOAuth2 logs in with the raw SASL XOAUTH2 response resp: on the AUTH
// line with ir, else after the server's 334. A 334 after the token is the
// server's error report (Gmail's base64 JSON): it is answered with an empty
// line, and the server's final reply is the result. Neither the token nor
// its base64 form reaches the trace.
func (u *upClient) authXOAuth2(resp []byte, ir bool) error {
	enc := base64.StdEncoding.EncodeToString(resp)
	var rep reply
	var err error
	if ir {
		rep, err = u.cmdShown("AUTH XOAUTH2 "+enc, "AUTH XOAUTH2 "+redacted)
	} else {
		rep, err = u.cmd("AUTH XOAUTH2")
		if err == nil && rep.code == 334 {
			rep, err = u.cmdShown(enc, redacted)
		}
	}
	if err == nil && rep.code == 334 {
		rep, err = u.cmd("")
	}
	if err != nil {
		return err
	}
	if rep.code != 235 {
		return rep.err()
	}
	return nil
}

// mail sends MAIL FROM with the client's options, as far as the upstream
// has the extensions: BODY=8BITMIME whenever it offers 8BITMIME (as
// go-smtp's client does: clients send 8-bit text without saying so),
// SIZE, SMTPUTF8 (the caller checks it is offered), DSN's RET and ENVID,
// and AUTH=. BINARYMIME never comes: the front does not offer it.
func (u *upClient) mail(from string, opts *smtp.MailOptions) error {
	var b strings.Builder
	b.WriteString("MAIL FROM:<")
	b.WriteString(from)
	b.WriteString(">")
	if u.has("8BITMIME") {
		b.WriteString(" BODY=8BITMIME")
	}
	if opts != nil {
		if opts.Size > 0 && u.has("SIZE") {
			b.WriteString(" SIZE=")
			b.WriteString(strconv.FormatInt(opts.Size, 10))
		}
		if opts.UTF8 {
			b.WriteString(" SMTPUTF8")
		}
		if u.has("DSN") {
			switch opts.Return {
			case "":
			case smtp.DSNReturnFull, smtp.DSNReturnHeaders:
				b.WriteString(" RET=")
				b.WriteString(string(opts.Return))
			default:
				return errBadParameter
			}
			if opts.EnvelopeID != "" {
				b.WriteString(" ENVID=")
				b.WriteString(xtext(opts.EnvelopeID))
			}
		}
		if opts.Auth != nil && u.has("AUTH") {
			b.WriteString(" AUTH=")
			if *opts.Auth == "" {
				b.WriteString("<>")
			} else {
				b.WriteString(xtext(*opts.Auth))
			}
		}
	}
	return ok2xx(u.cmd(b.String()))
}

// rcpt sends RCPT TO with DSN's NOTIFY and ORCPT when the upstream has DSN.
func (u *upClient) rcpt(to string, opts *smtp.RcptOptions) error {
	var b strings.Builder
	b.WriteString("RCPT TO:<")
	b.WriteString(to)
	b.WriteString(">")
	if opts != nil && u.has("DSN") {
		for i, n := range opts.Notify {
			if i == 0 {
				b.WriteString(" NOTIFY=")
			} else {
				b.WriteString(",")
			}
			b.WriteString(string(n))
		}
		if opts.OriginalRecipient != "" {
			b.WriteString(" ORCPT=")
			switch opts.OriginalRecipientType {
			case smtp.DSNAddressTypeRFC822:
				b.WriteString("rfc822;")
				b.WriteString(xtext(opts.OriginalRecipient))
			case smtp.DSNAddressTypeUTF8:
				b.WriteString("utf-8;")
				b.WriteString(utf8AddrText(opts.OriginalRecipient, u.has("SMTPUTF8")))
			default:
				return errBadParameter
			}
		}
	}
	return ok2xx(u.cmd(b.String()))
}

var errBadParameter = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 4},
	Message: "Parameter value cannot be passed on"}

// xtext encodes s as RFC 3461 xtext: printable ASCII but '+' and '=' as
// they are, every other byte as "+XX".
func xtext(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= '!' && c <= '~' && c != '+' && c != '=' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('+')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// utf8AddrText encodes an address as RFC 6533 utf-8-addr-unitext (UTF-8
// kept, for an upstream with SMTPUTF8) or utf-8-addr-xtext: characters
// that may not appear as they are become "\x{HEX}".
func utf8AddrText(s string, unitext bool) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= '!' && r <= '~' && r != '+' && r != '=' && r != '\\':
			b.WriteRune(r)
		case r > 0x7f && unitext:
			b.WriteRune(r)
		default:
			fmt.Fprintf(&b, `\x{%X}`, r)
		}
	}
	return b.String()
}

func (u *upClient) reset() error { return ok2xx(u.cmd("RSET")) }

// quit ends the connection politely, bounded by upstreamQuitTimeout.
func (u *upClient) quit() {
	u.timeout = upstreamQuitTimeout
	u.cmd("QUIT")
	u.conn.Close()
}

// abort drops the connection without another command: used when a message
// must not be completed (the final dot is never sent).
func (u *upClient) abort() { u.raw.Close() }

// dataBuffers are the write buffer and the copy buffer of a DATA phase,
// pooled: a connection needs them only while a message streams.
type dataBuffers struct {
	w    *bufio.Writer
	copy []byte
}

var dataPool = sync.Pool{New: func() any {
	return &dataBuffers{w: bufio.NewWriterSize(nil, dataBufferSize), copy: make([]byte, dataBufferSize)}
}}

// dataSender streams one message after the upstream's 354. Nothing of it
// ends the transaction until finish writes the final dot: a message cut
// short is dropped with the connection.
type dataSender struct {
	u   *upClient
	buf *dataBuffers
	dw  dotWriter
	n   int64 // bytes of the client's message data
	err error // the first write error
}

// startData sends DATA and waits for 354.
func (u *upClient) startData() (*dataSender, error) {
	rep, err := u.cmd("DATA")
	if err == nil && rep.code != 354 {
		err = rep.err()
	}
	if err != nil {
		return nil, err
	}
	buf := dataPool.Get().(*dataBuffers)
	buf.w.Reset(deadlineWriter{u})
	return &dataSender{u: u, buf: buf, dw: dotWriter{w: buf.w}}, nil
}

// deadlineWriter bounds each write of message data to the upstream.
type deadlineWriter struct{ u *upClient }

func (w deadlineWriter) Write(p []byte) (int, error) {
	w.u.raw.SetWriteDeadline(time.Now().Add(upstreamWriteTimeout))
	return w.u.conn.Write(p)
}

func (d *dataSender) Write(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	n, err := d.dw.Write(p)
	d.n += int64(n)
	if err != nil {
		d.err = fmt.Errorf("write message data: %w", err)
		return n, d.err
	}
	return n, nil
}

// copyFrom streams the client's data to the upstream; it returns the
// bytes read and, separately, the read error (io.EOF aside) and the
// write error.
func (d *dataSender) copyFrom(r io.Reader) (n int64, rerr, werr error) {
	buf := d.buf.copy
	for {
		m, err := r.Read(buf)
		if m > 0 {
			if _, werr := d.Write(buf[:m]); werr != nil {
				return d.n, nil, werr
			}
		}
		if err == io.EOF {
			return d.n, nil, nil
		}
		if err != nil {
			return d.n, err, nil
		}
	}
}

// finish ends the message (CRLF if missing, then the dot line) and reads
// the upstream's reply to it, within upstreamSubmitTimeout.
func (d *dataSender) finish() (reply, error) {
	u := d.u
	err := d.dw.close()
	if err == nil {
		err = d.buf.w.Flush()
	}
	d.release()
	u.traceLine(dirUpstreamOut, fmt.Sprintf("DATA: %d bytes", d.n))
	u.traceLine(dirUpstreamOut, ".")
	if err != nil {
		return reply{}, fmt.Errorf("write end of data: %w", err)
	}
	u.raw.SetReadDeadline(time.Now().Add(upstreamSubmitTimeout))
	return u.readReply()
}

// release gives the buffers back; whatever part of an unfinished message
// they still hold is dropped.
func (d *dataSender) release() {
	if d.buf != nil {
		d.buf.w.Reset(nil)
		dataPool.Put(d.buf)
		d.buf = nil
	}
}
