// Package smtpclient is the upstream SMTP client: it opens a session with
// the provider's submission server (implicit TLS on port 465, else
// STARTTLS; certificates checked against the configured roots), logs in
// with XOAUTH2, and is the first submit.Submitter.
//
// It is a small client of our own rather than go-smtp's: go-smtp's client
// can only take message data through net/textproto's DotWriter, which
// dot-stuffs a byte at a time (a third of the proxy's CPU time per message
// byte). This one writes the data through dotWriter into a large pooled
// buffer, and keeps per-command control: every client command maps to one
// upstream command and reply.
package smtpclient

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

	"mailproxy/submit"
	"mailproxy/upstream"
)

var (
	_ submit.Submitter = (*Client)(nil)
	_ io.Closer        = (*Client)(nil)
)

const (
	readBufferSize = 4096     // replies; a longer reply line is refused (RFC 5321 allows 512 bytes)
	maxReplyLines  = 100      // lines in one reply (an EHLO reply has about 15)
	dataBufferSize = 32 << 10 // write buffer of the DATA phase, and its copy buffer
	redacted       = "<redacted>"

	// DefaultOpenTimeout bounds Open when Options.Timeout is 0: token
	// aside, dial, TLS, EHLO and AUTH together.
	DefaultOpenTimeout = 30 * time.Second
	commandTimeout     = 2 * time.Minute  // reply to MAIL, RCPT, DATA, RSET on an open session
	submitTimeout      = 10 * time.Minute // reply after the final dot
	writeTimeout       = time.Minute      // each write of message data
	quitTimeout        = 5 * time.Second  // polite QUIT

	// Trace directions.
	dirOut = "proxy->upstream"
	dirIn  = "upstream->proxy"
)

// Options say how to reach one submission server.
type Options struct {
	Addr   string          // host:port; port 465 is implicit TLS, any other STARTTLS
	TLS    *tls.Config     // for Addr: roots and ServerName; nil: system roots, ServerName from Addr
	Dial   upstream.Dialer // nil: net.Dialer
	Domain string          // the EHLO name
	// Timeout bounds each command while opening; 0: DefaultOpenTimeout.
	// The caller's ctx bounds the whole opening.
	Timeout time.Duration
	// Trace, when set, gets every command and reply at debug level, with
	// the XOAUTH2 response replaced by "<redacted>" and message data shown
	// as its size.
	Trace *slog.Logger
	// Log gets the client's own debug lines (a fallback taken); nil: none.
	Log *slog.Logger
}

// Client is one session with the provider's submission server, used for
// every transaction of one client session. Its methods must not be called
// concurrently, except Close.
type Client struct {
	conn    net.Conn // commands and data: TLS over raw
	raw     net.Conn // the TCP connection, for deadlines and Close
	r       *bufio.Reader
	ext     map[string]string // EHLO keywords (upper case) and their parameters
	timeout time.Duration     // bounds each command and its reply
	trace   *slog.Logger      // protocol trace; nil: off
	line    []byte            // reused for each command line
}

func newClient(conn, raw net.Conn, trace *slog.Logger) *Client {
	return &Client{conn: conn, raw: raw, r: bufio.NewReaderSize(conn, readBufferSize), trace: trace}
}

// Opener returns the submit.Opener of the server o describes.
func Opener(o Options) submit.Opener {
	return func(ctx context.Context, identity, token string) (submit.Submitter, error) {
		c, err := Open(ctx, o, identity, token)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
}

// Open connects, says EHLO (with STARTTLS unless the port is 465) and logs
// in with XOAUTH2 for identity with token, everything under ctx. Some
// servers refuse an AUTH line as long as an Entra token makes it (~2 KB);
// then the token is sent after the 334 prompt instead, on a new connection
// if the server hung up. The upstream's refusal is an *smtp.SMTPError.
func Open(ctx context.Context, o Options, identity, token string) (*Client, error) {
	resp := upstream.XOAuth2(identity, token)
	c, err := dial(ctx, o)
	if err != nil {
		return nil, err
	}
	err = c.auth(ctx, resp, true)
	if se := (*smtp.SMTPError)(nil); errors.As(err, &se) && (se.Code == 500 || se.Code == 501) {
		if o.Log != nil {
			o.Log.Debug("upstream refused the AUTH line with the token; sending it after the 334 prompt",
				"reply", ReplyText(se))
		}
		err = c.auth(ctx, resp, false)
		if err != nil && !errors.As(err, &se) {
			c.Close()
			if c, err = dial(ctx, o); err != nil {
				return nil, err
			}
			err = c.auth(ctx, resp, false)
		}
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	c.timeout = commandTimeout
	return c, nil
}

// auth runs AUTH XOAUTH2 under ctx.
func (c *Client) auth(ctx context.Context, resp []byte, ir bool) error {
	stop := context.AfterFunc(ctx, func() { c.raw.Close() })
	err := c.authXOAuth2(resp, ir)
	if !stop() {
		return fmt.Errorf("upstream AUTH: %w", context.Cause(ctx))
	}
	if err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return se
		}
		return fmt.Errorf("upstream AUTH: %w", err)
	}
	return nil
}

// dial connects to o.Addr, reads the greeting and says EHLO, with
// STARTTLS in between unless the port is 465. Everything runs under ctx.
func dial(ctx context.Context, o Options) (*Client, error) {
	if _, _, err := net.SplitHostPort(o.Addr); err != nil {
		return nil, fmt.Errorf("upstream address %q: %w", o.Addr, err)
	}
	var err error
	cfg := o.TLS
	var conn, raw net.Conn
	starttls := cfg
	if upstream.ImplicitTLS(o.Addr) {
		tc, err := upstream.DialTLS(ctx, o.Dial, o.Addr, cfg)
		if err != nil {
			return nil, fmt.Errorf("upstream: %w", err)
		}
		conn, raw, starttls = tc, tc.NetConn(), nil
	} else {
		dial := o.Dial
		if dial == nil {
			var d net.Dialer
			dial = d.DialContext
		}
		if raw, err = dial(ctx, "tcp", o.Addr); err != nil {
			return nil, fmt.Errorf("dial upstream %s: %w", o.Addr, err)
		}
		conn = raw
		if starttls == nil {
			starttls = (&upstream.Upstream{}).TLSFor(o.Addr)
		}
	}
	c := newClient(conn, raw, o.Trace)
	c.timeout = o.Timeout
	if c.timeout <= 0 {
		c.timeout = DefaultOpenTimeout
	}
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	err = c.hello(ctx, o.Domain, starttls)
	if !stop() {
		return nil, fmt.Errorf("upstream %s: %w", o.Addr, context.Cause(ctx))
	}
	if err != nil {
		raw.Close()
		return nil, fmt.Errorf("upstream %s: %w", o.Addr, err)
	}
	return c, nil
}

// ReplyText renders an upstream reply for the log: "550 5.1.1 text".
func ReplyText(se *smtp.SMTPError) string {
	s := strconv.Itoa(se.Code)
	if se.EnhancedCode != smtp.EnhancedCodeNotSet && se.EnhancedCode != smtp.NoEnhancedCode {
		s += fmt.Sprintf(" %d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	}
	return s + " " + submit.OneLine(se.Message)
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
		return fmt.Errorf("unexpected reply %d %s", r.code, submit.Truncate(submit.OneLine(r.text()), 100))
	}
	se := &smtp.SMTPError{Code: r.code, Message: r.text()}
	if ec, rest := submit.ParseStatus(se.Message); ec != smtp.EnhancedCodeNotSet {
		first, _, _ := strings.Cut(se.Message, " ")
		se.EnhancedCode = ec
		se.Message = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
	}
	return se
}

func (c *Client) traceLine(dir, line string) {
	if c.trace != nil {
		c.trace.Debug("smtp trace", "dir", dir, "line", line)
	}
}

// setConn switches to conn (TLS after STARTTLS), dropping the read buffer.
func (c *Client) setConn(conn net.Conn) {
	c.conn = conn
	c.r = bufio.NewReaderSize(conn, readBufferSize)
}

// readReply reads one reply, possibly of several lines.
func (c *Client) readReply() (reply, error) {
	var rep reply
	for {
		b, err := c.r.ReadSlice('\n')
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
		c.traceLine(dirIn, line)
		code, ok := replyCode(line)
		if !ok || (rep.lines != nil && code != rep.code) {
			return reply{}, fmt.Errorf("malformed reply line %q", submit.Truncate(line, 100))
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

// cmd sends one command line and reads its reply, both within c.timeout.
func (c *Client) cmd(line string) (reply, error) { return c.cmdShown(line, line) }

// cmdShown is cmd with another text in the trace: the command hides a
// credential.
func (c *Client) cmdShown(line, shown string) (reply, error) {
	if strings.ContainsAny(line, "\r\n") {
		// go-smtp's server never passes one on; refuse rather than inject.
		return reply{}, errors.New("command line holds CR or LF")
	}
	c.raw.SetDeadline(time.Now().Add(c.timeout))
	c.traceLine(dirOut, shown)
	c.line = append(append(c.line[:0], line...), '\r', '\n')
	if _, err := c.conn.Write(c.line); err != nil {
		return reply{}, fmt.Errorf("write command: %w", err)
	}
	return c.readReply()
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
func (c *Client) hello(ctx context.Context, domain string, tlsConfig *tls.Config) error {
	c.raw.SetDeadline(time.Now().Add(c.timeout))
	rep, err := c.readReply()
	if err == nil && rep.code != 220 {
		err = rep.err()
	}
	if err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if err := c.ehlo(domain); err != nil {
		return err
	}
	if tlsConfig == nil {
		return nil
	}
	if _, ok := c.ext["STARTTLS"]; !ok {
		return errors.New("server does not offer STARTTLS")
	}
	rep, err = c.cmd("STARTTLS")
	if err == nil && rep.code != 220 {
		err = rep.err()
	}
	if err != nil {
		return fmt.Errorf("STARTTLS: %w", err)
	}
	if c.r.Buffered() > 0 {
		// Plain text after the 220 would be read as if it came over TLS.
		return errors.New("STARTTLS: server sent data after its 220 reply")
	}
	tc := tls.Client(c.raw, tlsConfig)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	c.traceLine(dirOut, "<TLS handshake done>")
	c.setConn(tc)
	return c.ehlo(domain)
}

func (c *Client) ehlo(domain string) error {
	rep, err := c.cmd("EHLO " + domain)
	if err == nil && rep.code != 250 {
		err = rep.err()
	}
	if err != nil {
		return fmt.Errorf("EHLO: %w", err)
	}
	c.ext = make(map[string]string, len(rep.lines))
	for _, l := range rep.lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		c.ext[strings.ToUpper(k)] = v
	}
	return nil
}

func (c *Client) has(ext string) bool {
	_, ok := c.ext[ext]
	return ok
}

// authXOAuth2 logs in with the raw SASL XOAUTH2 response resp: on the AUTH
// line with ir, else after the server's 334. A 334 after the token is the
// server's error report (Gmail's base64 JSON): it is answered with an empty
// line, and the server's final reply is the result. Neither the token nor
// its base64 form reaches the trace.
func (c *Client) authXOAuth2(resp []byte, ir bool) error {
	enc := base64.StdEncoding.EncodeToString(resp)
	var rep reply
	var err error
	if ir {
		rep, err = c.cmdShown("AUTH XOAUTH2 "+enc, "AUTH XOAUTH2 "+redacted)
	} else {
		rep, err = c.cmd("AUTH XOAUTH2")
		if err == nil && rep.code == 334 {
			rep, err = c.cmdShown(enc, redacted)
		}
	}
	if err == nil && rep.code == 334 {
		rep, err = c.cmd("")
	}
	if err != nil {
		return err
	}
	if rep.code != 235 {
		return rep.err()
	}
	return nil
}

// Mail sends MAIL FROM with the client's options, as far as the upstream
// has the extensions: BODY=8BITMIME whenever it offers 8BITMIME (as
// go-smtp's client does: clients send 8-bit text without saying so),
// SIZE, SMTPUTF8 (refused with 555 5.6.7 when not offered), DSN's RET and ENVID,
// and AUTH=. BINARYMIME never comes: the front does not offer it.
func (c *Client) Mail(from string, opts *smtp.MailOptions) error {
	if opts != nil && opts.UTF8 && !c.has("SMTPUTF8") {
		return errNoUTF8
	}
	path, err := pathArg(from)
	if err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString("MAIL FROM:<")
	b.WriteString(path)
	b.WriteString(">")
	if c.has("8BITMIME") {
		b.WriteString(" BODY=8BITMIME")
	}
	if opts != nil {
		if opts.Size > 0 && c.has("SIZE") {
			b.WriteString(" SIZE=")
			b.WriteString(strconv.FormatInt(opts.Size, 10))
		}
		if opts.UTF8 {
			b.WriteString(" SMTPUTF8")
		}
		if c.has("DSN") {
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
		if opts.Auth != nil && c.has("AUTH") {
			b.WriteString(" AUTH=")
			if *opts.Auth == "" {
				b.WriteString("<>")
			} else {
				b.WriteString(xtext(*opts.Auth))
			}
		}
	}
	return ok2xx(c.cmd(b.String()))
}

// Rcpt sends RCPT TO with DSN's NOTIFY and ORCPT when the upstream has DSN.
func (c *Client) Rcpt(to string, opts *smtp.RcptOptions) error {
	path, err := pathArg(to)
	if err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString("RCPT TO:<")
	b.WriteString(path)
	b.WriteString(">")
	if opts != nil && c.has("DSN") {
		for i, n := range opts.Notify {
			switch n {
			case smtp.DSNNotifyNever, smtp.DSNNotifySuccess, smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed:
			default:
				return errBadParameter
			}
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
				b.WriteString(utf8AddrText(opts.OriginalRecipient, c.has("SMTPUTF8")))
			default:
				return errBadParameter
			}
		}
	}
	return ok2xx(c.cmd(b.String()))
}

var errNoUTF8 = &smtp.SMTPError{Code: 555, EnhancedCode: smtp.EnhancedCode{5, 6, 7},
	Message: "Upstream mail server does not support SMTPUTF8"}

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

// Reset abandons the open transaction (RSET).
func (c *Client) Reset() error { return ok2xx(c.cmd("RSET")) }

// Quit ends the session politely, bounded by quitTimeout, and closes it.
func (c *Client) Quit() error {
	c.timeout = quitTimeout
	_, err := c.cmd("QUIT")
	c.conn.Close()
	return err
}

// Close drops the connection without another command: used when a message
// must not be completed (the final dot is never sent). It may be called
// while another method runs, which then fails.
func (c *Client) Close() error { return c.raw.Close() }

// dataBuffers are the write buffer and the copy buffer of a DATA phase,
// pooled: a session needs them only while a message streams.
type dataBuffers struct {
	w    *bufio.Writer
	copy []byte
}

var dataPool = sync.Pool{New: func() any {
	return &dataBuffers{w: bufio.NewWriterSize(nil, dataBufferSize), copy: make([]byte, dataBufferSize)}
}}

// Data sends DATA and, after the 354, the message read from r, dot-stuffed
// in bulk, then the final dot; it returns the text of the upstream's 250.
// A refused DATA command is followed by RSET (MAIL and RCPT would still
// stand upstream). When r or a write fails the connection is dropped
// before the final dot, so nothing truncated is delivered: the error then
// wraps r's error, or the write's.
func (c *Client) Data(r io.Reader) (string, error) {
	rep, err := c.cmd("DATA")
	if err == nil && rep.code != 354 {
		err = rep.err()
		if c.Reset() != nil {
			c.Close()
		}
	}
	if err != nil {
		return "", err
	}
	buf := dataPool.Get().(*dataBuffers)
	defer func() {
		// Whatever part of an unfinished message the buffer still holds
		// is dropped.
		buf.w.Reset(nil)
		dataPool.Put(buf)
	}()
	buf.w.Reset(deadlineWriter{c})
	dw := dotWriter{w: buf.w}
	var n int64
	for {
		m, rerr := r.Read(buf.copy)
		if m > 0 {
			if _, werr := dw.Write(buf.copy[:m]); werr != nil {
				c.Close()
				return "", fmt.Errorf("write message data: %w", werr)
			}
			n += int64(m)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			c.Close()
			return "", fmt.Errorf("read message data: %w", rerr)
		}
	}
	err = dw.close()
	if err == nil {
		err = buf.w.Flush()
	}
	c.traceLine(dirOut, fmt.Sprintf("DATA: %d bytes", n))
	c.traceLine(dirOut, ".")
	if err != nil {
		c.Close()
		return "", fmt.Errorf("write end of data: %w", err)
	}
	c.raw.SetReadDeadline(time.Now().Add(submitTimeout))
	rep, err = c.readReply()
	if err == nil && rep.code/100 != 2 {
		err = rep.err()
	}
	if err != nil {
		return "", err
	}
	return rep.text(), nil
}

// deadlineWriter bounds each write of message data to the upstream.
type deadlineWriter struct{ c *Client }

func (w deadlineWriter) Write(p []byte) (int, error) {
	w.c.raw.SetWriteDeadline(time.Now().Add(writeTimeout))
	return w.c.conn.Write(p)
}
