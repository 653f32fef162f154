package fake365

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"mailproxy/config"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Defaults of the fake SMTP server, close to Exchange Online's.
const (
	// DefaultMaxMessageBytes is Exchange Online's default message size
	// limit (35 MiB), advertised with SIZE: config's one definition.
	DefaultMaxMessageBytes = config.FallbackMaxMessageBytes
	// smtpMaxRecipients is Exchange Online's per-message recipient limit.
	smtpMaxRecipients = 500
	// smtpMaxLineLength lets through the long AUTH response line of an
	// Entra token (about 2 KiB in base64) and body lines longer than the
	// 998 bytes RFC 5322 allows, which real mail contains; go-smtp applies
	// this limit to DATA too.
	smtpMaxLineLength = 1 << 20
	smtpReadTimeout   = 10 * time.Minute
	smtpWriteTimeout  = time.Minute
)

// Replies that mimic Exchange Online.
var (
	errSMTPAuthFailed = &smtp.SMTPError{
		Code:         535,
		EnhancedCode: smtp.EnhancedCode{5, 7, 3},
		Message:      "Authentication unsuccessful",
	}
	errSMTPAuthRequired = &smtp.SMTPError{
		Code:         530,
		EnhancedCode: smtp.EnhancedCode{5, 7, 0},
		Message:      "Authentication required",
	}
	errSMTPLineTooLong = &smtp.SMTPError{
		Code:         500,
		EnhancedCode: smtp.EnhancedCode{5, 5, 2},
		Message:      "Line too long",
	}
	errSMTPDataRead = &smtp.SMTPError{
		Code:         451,
		EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message:      "Error reading message data",
	}
)

// Message is one message the fake SMTP server accepted.
type Message struct {
	AuthUser string // XOAUTH2 user= of the session
	From     string
	MailOpts smtp.MailOptions
	Rcpts    []Rcpt
	Data     []byte // exactly the bytes after dot-unstuffing, CRLF kept
	QueueID  string // the id in the "250 2.0.0 OK <id> Queued" reply
}

// Rcpt is one RCPT TO of a Message.
type Rcpt struct {
	Addr string
	Opts smtp.RcptOptions
}

// SMTPUpstream is a fake Exchange Online SMTP submission server
// (smtp.office365.com): AUTH XOAUTH2 only, after STARTTLS (or on an
// implicit TLS listener), recording every accepted message.
type SMTPUpstream struct {
	// Addr is the listening address, host:port on 127.0.0.1.
	Addr string

	validator TokenValidator
	srv       *smtp.Server
	ln        *trackingListener
	records   *recordListener // implicit TLS only (SetRecordSize)
	serveDone chan struct{}
	closeOnce sync.Once
	closeErr  error

	logins   atomic.Int64
	failures atomic.Int64
	queueSeq atomic.Int64

	mu          sync.Mutex // protects everything below
	delegates   map[string]map[string]struct{}
	failAt      map[string]*smtp.SMTPError
	faults      smtpFaults // smtp_faults.go
	messages    []Message
	deliver     func(Message)
	maxAuthLine int
}

// NewSMTPUpstream starts a fake SMTP server on 127.0.0.1:0 that checks
// tokens with v. With implicitTLS the listener speaks TLS from the first byte
// (like port 465); otherwise clients must use STARTTLS (like port 587)
// before AUTH. A nil tlsCfg gives a plain-text server that allows AUTH
// without TLS (tests only); it cannot be combined with implicitTLS.
func NewSMTPUpstream(v TokenValidator, tlsCfg *tls.Config, implicitTLS bool) (*SMTPUpstream, error) {
	if v == nil {
		return nil, errors.New("fake365: new SMTP upstream: nil TokenValidator")
	}
	if implicitTLS && tlsCfg == nil {
		return nil, errors.New("fake365: new SMTP upstream: implicit TLS needs a TLS config")
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("fake365: SMTP upstream listen: %w", err)
	}
	u := &SMTPUpstream{
		Addr:      raw.Addr().String(),
		validator: v,
		ln:        newTrackingListener(raw),
		serveDone: make(chan struct{}),
		delegates: make(map[string]map[string]struct{}),
		failAt:    make(map[string]*smtp.SMTPError),
	}
	srv := smtp.NewServer(smtp.BackendFunc(u.newSession))
	srv.Domain = "smtp.fake365.test"
	srv.TLSConfig = tlsCfg
	srv.AllowInsecureAuth = tlsCfg == nil
	srv.MaxMessageBytes = DefaultMaxMessageBytes
	srv.MaxRecipients = smtpMaxRecipients
	srv.MaxLineLength = smtpMaxLineLength
	srv.ReadTimeout = smtpReadTimeout
	srv.WriteTimeout = smtpWriteTimeout
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.ErrorLog = log.New(io.Discard, "", 0)
	u.srv = srv

	var ln net.Listener = u.ln
	if implicitTLS {
		// The listener does TLS, and with SetRecordSize it wraps the
		// *tls.Conn, which go-smtp would then take for plain text: it
		// must neither offer STARTTLS inside TLS nor refuse AUTH.
		u.records = newRecordListener(u.ln, tlsCfg)
		ln = u.records
		srv.TLSConfig = nil
		srv.AllowInsecureAuth = true
	}
	go func() {
		defer close(u.serveDone)
		srv.Serve(ln)
	}()
	return u, nil
}

// Close stops the listener and closes every live connection.
func (u *SMTPUpstream) Close() error {
	u.closeOnce.Do(func() {
		u.closeErr = u.srv.Close()
		// Serve may not have registered the listener with go-smtp yet.
		if err := u.ln.Close(); err != nil && u.closeErr == nil && !errors.Is(err, net.ErrClosed) {
			u.closeErr = err
		}
		u.ln.closeAll()
		<-u.serveDone
	})
	if u.closeErr != nil {
		return fmt.Errorf("fake365: close SMTP upstream: %w", u.closeErr)
	}
	return nil
}

// SetMaxMessageBytes changes the SIZE limit (default 35 MB) for connections
// accepted afterwards; call it before clients connect.
func (u *SMTPUpstream) SetMaxMessageBytes(n int64) {
	u.ln.locked(func() { u.srv.MaxMessageBytes = n })
}

// SetRecordSize makes connections accepted from now on write TLS records
// of at most n bytes of plaintext, as IMAPUpstream.SetRecordSize does; n
// <= 0 goes back to crypto/tls's default. It applies to an implicit TLS
// server only: after STARTTLS, go-smtp holds the *tls.Conn itself. On SMTP
// the upstream writes replies only, each far smaller than any record size
// a server chooses, so the size changes nothing a client reads; the
// message data a proxy relays travels the other way, in the records its
// own client writes (smtpclient: full 16 KiB records).
func (u *SMTPUpstream) SetRecordSize(n int) {
	if u.records != nil {
		u.records.setSize(n)
	}
}

// SetMaxAuthLine makes the server refuse, with "500 5.5.2 Line too long",
// an AUTH command line (without CRLF) longer than n bytes. The client can
// then send AUTH XOAUTH2 without an initial response and answer the "334 "
// prompt instead. n <= 0 removes the limit.
func (u *SMTPUpstream) SetMaxAuthLine(n int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.maxAuthLine = n
}

// Delegate lets tokens issued to username authenticate as mailbox (user=
// the shared address).
func (u *SMTPUpstream) Delegate(mailbox, username string) {
	key := strings.ToLower(mailbox)
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.delegates[key] == nil {
		u.delegates[key] = make(map[string]struct{})
	}
	u.delegates[key][strings.ToLower(username)] = struct{}{}
}

// FailAt makes the server answer every command of stage ("AUTH", "MAIL",
// "RCPT" or "DATA") with e; a nil e clears it. A DATA failure is returned
// after the whole message was read, as real servers do.
func (u *SMTPUpstream) FailAt(stage string, e *smtp.SMTPError) {
	stage = strings.ToUpper(stage)
	u.mu.Lock()
	defer u.mu.Unlock()
	if e == nil {
		delete(u.failAt, stage)
		return
	}
	u.failAt[stage] = e
}

// Messages returns copies of the messages accepted so far, oldest first.
func (u *SMTPUpstream) Messages() []Message {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make([]Message, len(u.messages))
	for i, m := range u.messages {
		out[i] = m.clone()
	}
	return out
}

// SetDeliver sets a function called with a copy of every accepted message,
// after it was recorded and before the client gets its 250.
func (u *SMTPUpstream) SetDeliver(f func(Message)) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.deliver = f
}

// Connections returns the number of connections accepted so far.
func (u *SMTPUpstream) Connections() int { return u.ln.total() }

// Conns returns the number of open connections.
func (u *SMTPUpstream) Conns() int { return u.ln.open() }

// WaitConns blocks until exactly n connections are open or ctx ends.
func (u *SMTPUpstream) WaitConns(ctx context.Context, n int) error {
	return u.ln.waitOpen(ctx, n)
}

// Logins returns the number of successful AUTH XOAUTH2 exchanges.
func (u *SMTPUpstream) Logins() int { return int(u.logins.Load()) }

// AuthFailures returns the number of AUTH attempts answered with 535.
func (u *SMTPUpstream) AuthFailures() int { return int(u.failures.Load()) }

func (u *SMTPUpstream) stageError(stage string, arg ...string) *smtp.SMTPError {
	u.mu.Lock()
	defer u.mu.Unlock()
	if e := u.failAt[stage]; e != nil {
		return e
	}
	return u.faultAt(stage, strings.Join(arg, ""))
}

// authorize checks an XOAUTH2 user= and token: the token's own address, a
// mailbox delegated to the token's user, or anything for app-only tokens.
func (u *SMTPUpstream) authorize(user, token string) bool {
	if user == "" || token == "" {
		return false
	}
	subject, _, ok := u.validator.Validate(token)
	if !ok {
		return false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	return mayAct(subject, user, u.delegates[strings.ToLower(user)])
}

// record stores m under a new queue id and hands a copy to the deliver hook.
func (u *SMTPUpstream) record(m Message) string {
	m.QueueID = fmt.Sprintf("%08X@fake365", u.queueSeq.Add(1))
	u.mu.Lock()
	u.messages = append(u.messages, m.clone())
	deliver := u.deliver
	u.mu.Unlock()
	if deliver != nil {
		deliver(m.clone())
	}
	return m.QueueID
}

func (u *SMTPUpstream) newSession(c *smtp.Conn) (smtp.Session, error) {
	return &smtpSession{up: u}, nil
}

// smtpSession is one SMTP connection (go-smtp calls it from one goroutine).
type smtpSession struct {
	up       *SMTPUpstream
	authUser string // "" until AUTH succeeded
	from     string
	mailOpts smtp.MailOptions
	rcpts    []Rcpt
}

var _ smtp.AuthSession = (*smtpSession)(nil)

func (s *smtpSession) AuthMechanisms() []string { return []string{"XOAUTH2"} }

func (s *smtpSession) Auth(mech string) (sasl.Server, error) {
	if mech != "XOAUTH2" {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	if e := s.up.stageError("AUTH"); e != nil {
		return nil, e
	}
	s.up.mu.Lock()
	maxLine := s.up.maxAuthLine
	s.up.mu.Unlock()
	return &smtpXOAuth2{session: s, maxLine: maxLine}, nil
}

func (s *smtpSession) Mail(from string, opts *smtp.MailOptions) error {
	if s.authUser == "" {
		return errSMTPAuthRequired
	}
	if e := s.up.stageError("MAIL"); e != nil {
		return e
	}
	s.from = from
	s.mailOpts = cloneMailOptions(opts)
	s.rcpts = nil
	return nil
}

func (s *smtpSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	if s.authUser == "" {
		return errSMTPAuthRequired
	}
	if e := s.up.stageError("RCPT", to); e != nil {
		return e
	}
	s.rcpts = append(s.rcpts, Rcpt{Addr: to, Opts: cloneRcptOptions(opts)})
	return nil
}

// Data records the message only once all of it arrived. On success it
// returns an *smtp.SMTPError with code 250: go-smtp sends any SMTPError's
// code and text verbatim, and this is the only way to give the 250 a queue
// id like Exchange does instead of go-smtp's fixed "OK: queued".
func (s *smtpSession) Data(r io.Reader) error {
	if s.authUser == "" {
		return errSMTPAuthRequired
	}
	data, err := io.ReadAll(r)
	if err != nil {
		var smtpErr *smtp.SMTPError
		if errors.As(err, &smtpErr) {
			return smtpErr // e.g. 552 message too big
		}
		return errSMTPDataRead
	}
	if e := s.up.stageError("DATA"); e != nil {
		return e
	}
	id := s.up.record(Message{
		AuthUser: s.authUser,
		From:     s.from,
		MailOpts: s.mailOpts,
		Rcpts:    s.rcpts,
		Data:     data,
	})
	return &smtp.SMTPError{
		Code:         250,
		EnhancedCode: smtp.EnhancedCode{2, 0, 0},
		Message:      "OK <" + id + "> Queued",
	}
}

func (s *smtpSession) Reset() {
	s.from = ""
	s.mailOpts = smtp.MailOptions{}
	s.rcpts = nil
}

func (s *smtpSession) Logout() error { return nil }

// smtpXOAuth2 is the server side of AUTH XOAUTH2 with Exchange's replies.
type smtpXOAuth2 struct {
	session *smtpSession
	maxLine int
	started bool
}

var _ sasl.Server = (*smtpXOAuth2)(nil)

func (x *smtpXOAuth2) Next(response []byte) (challenge []byte, done bool, err error) {
	first := !x.started
	x.started = true
	if response == nil {
		if first {
			// No initial response: prompt with an empty "334 ".
			return nil, false, nil
		}
		return nil, false, errSMTPAuthFailed
	}
	if first && x.maxLine > 0 {
		// go-smtp has already read the line; its length is what the client
		// sent: "AUTH XOAUTH2 " and the base64 of the initial response.
		if n := len("AUTH XOAUTH2 ") + base64.StdEncoding.EncodedLen(len(response)); n > x.maxLine {
			return nil, false, errSMTPLineTooLong
		}
	}
	s := x.session
	user, token, perr := parseXOAuth2(response)
	if perr != nil || !s.up.authorize(user, token) {
		s.up.failures.Add(1)
		return nil, false, errSMTPAuthFailed
	}
	s.up.logins.Add(1)
	s.authUser = user
	return nil, true, nil
}

func (m Message) clone() Message {
	c := m
	c.MailOpts = cloneMailOptions(&m.MailOpts)
	c.Data = append([]byte(nil), m.Data...)
	c.Rcpts = make([]Rcpt, len(m.Rcpts))
	for i, r := range m.Rcpts {
		c.Rcpts[i] = Rcpt{Addr: r.Addr, Opts: cloneRcptOptions(&r.Opts)}
	}
	return c
}

func cloneMailOptions(o *smtp.MailOptions) smtp.MailOptions {
	if o == nil {
		return smtp.MailOptions{}
	}
	c := *o
	if o.Auth != nil {
		a := *o.Auth
		c.Auth = &a
	}
	return c
}

func cloneRcptOptions(o *smtp.RcptOptions) smtp.RcptOptions {
	if o == nil {
		return smtp.RcptOptions{}
	}
	c := *o
	c.Notify = append([]smtp.DSNNotify(nil), o.Notify...)
	if o.DeliverBy != nil {
		d := *o.DeliverBy
		c.DeliverBy = &d
	}
	if o.MTPriority != nil {
		p := *o.MTPriority
		c.MTPriority = &p
	}
	return c
}
