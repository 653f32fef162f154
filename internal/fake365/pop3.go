package fake365

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// POPScope is the delegated scope Exchange Online wants in a token used for
// POP3. App-only tokens need the application permission POP.AccessAsApp
// among their roles instead.
const POPScope = "https://outlook.office.com/POP.AccessAsUser.All"

// Replies that mimic Exchange Online and Gmail.
const (
	pop3Greeting        = "+OK The Microsoft Exchange POP3 service is ready."
	pop3GmailGreeting   = "+OK Gpop ready"
	pop3AuthFailed      = "-ERR Authentication failure: unknown user name or bad password."
	pop3GmailAuthFailed = "-ERR [AUTH] Invalid credentials."
	pop3LoginDisabled   = "-ERR Logon failure: basic authentication is disabled."
	pop3MaxLine         = 64 << 10 // a SASL response line with a 2 KiB token fits easily
	pop3IdleTimeout     = 10 * time.Minute
)

// POP3Upstream is a fake Exchange Online POP3 server (outlook.office365.com
// port 995): AUTH XOAUTH2 only, with tokens its TokenValidator issued for
// the POP scope, on the mailboxes of an IMAPUpstream, so that a message
// delivered there by SMTP or IMAP can be fetched by POP3 and a POP3 DELE
// removes it for IMAP too.
type POP3Upstream struct {
	// Addr is the listening address, host:port on 127.0.0.1.
	Addr string

	validator TokenValidator
	store     *IMAPUpstream
	ln        *trackingListener
	tlsCfg    *tls.Config
	serveDone chan struct{}
	closeOnce sync.Once

	gmail    atomic.Bool
	logins   atomic.Int64
	failures atomic.Int64
	irLimit  atomic.Int64 // refuse AUTH lines with an initial response longer than this; 0: none
}

// NewPOP3Upstream starts a fake POP3 server on 127.0.0.1:0 serving the
// mailboxes of store (see IMAPUpstream.AddMailbox, Delegate) and checking
// tokens with v. With tlsCfg the listener speaks implicit TLS (port 995);
// without it the server is plain text (tests only).
func NewPOP3Upstream(v TokenValidator, store *IMAPUpstream, tlsCfg *tls.Config) (*POP3Upstream, error) {
	if v == nil || store == nil {
		return nil, errors.New("fake365: new POP3 upstream: nil TokenValidator or store")
	}
	tl, err := listenTracking("POP3")
	if err != nil {
		return nil, err
	}
	u := &POP3Upstream{
		Addr:      tl.Addr().String(),
		validator: v,
		store:     store,
		ln:        tl,
		tlsCfg:    tlsCfg,
		serveDone: make(chan struct{}),
	}
	go u.serve()
	return u, nil
}

func (u *POP3Upstream) serve() {
	defer close(u.serveDone)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		nc, err := u.ln.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer nc.Close()
			if u.tlsCfg != nil {
				nc = tls.Server(nc, u.tlsCfg)
			}
			s := &pop3Session{up: u, conn: nc, r: bufio.NewReaderSize(nc, 4096), w: bufio.NewWriterSize(nc, 32<<10)}
			s.run()
		}()
	}
}

// Close stops the listener, closes every live connection and waits for
// their goroutines.
func (u *POP3Upstream) Close() error {
	u.closeOnce.Do(func() {
		u.ln.shutdown(nil, u.serveDone)
	})
	return nil
}

// SetGmailStyle switches how a refused token is reported. false (default),
// Exchange Online: "-ERR Authentication failure: ...". true, Gmail: a "+ "
// continuation carrying a base64 JSON error, and after the client's empty
// answer "-ERR [AUTH] Invalid credentials.".
func (u *POP3Upstream) SetGmailStyle(on bool) { u.gmail.Store(on) }

// SetMaxInitialResponseLine makes the server refuse, with "-ERR line too
// long", an AUTH command whose line (without CRLF) is longer than n bytes,
// as RFC 5034's 255-octet limit lets servers do. n <= 0: no limit.
func (u *POP3Upstream) SetMaxInitialResponseLine(n int) { u.irLimit.Store(int64(max(n, 0))) }

// Logins returns the number of successful XOAUTH2 authentications.
func (u *POP3Upstream) Logins() int { return int(u.logins.Load()) }

// AuthFailures returns the number of refused authentications (bad, unknown
// or out-of-scope tokens, malformed responses, USER/PASS).
func (u *POP3Upstream) AuthFailures() int { return int(u.failures.Load()) }

// Connections returns the number of connections accepted so far.
func (u *POP3Upstream) Connections() int { return u.ln.total() }

// Conns returns the number of open connections.
func (u *POP3Upstream) Conns() int { return u.ln.open() }

// WaitConns blocks until exactly n connections are open or ctx ends.
func (u *POP3Upstream) WaitConns(ctx context.Context, n int) error { return u.ln.waitOpen(ctx, n) }

// authorize checks an XOAUTH2 user= and token for POP3.
func (u *POP3Upstream) authorize(user, token string) bool {
	if user == "" || token == "" {
		return false
	}
	subject, _, ok := u.validator.Validate(token)
	if !ok {
		return false
	}
	if sv, ok := u.validator.(ScopeValidator); ok {
		need := POPScope
		if strings.HasPrefix(subject, "app:") {
			need = "POP.AccessAsApp"
		}
		if !sv.HasScope(token, need) {
			return false
		}
	}
	key := strings.ToLower(user)
	u.store.mu.Lock()
	defer u.store.mu.Unlock()
	if u.store.mailboxes[key] == nil {
		return false
	}
	return mayAct(subject, user, u.store.delegates[key])
}

// pop3Msg is one message of the session's maildrop listing.
type pop3Msg struct {
	uid     imap.UID
	size    int64
	deleted bool
}

// pop3Session is one POP3 connection (RFC 1939 with RFC 2449 CAPA and RFC
// 5034 AUTH).
type pop3Session struct {
	up   *POP3Upstream
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer

	store    *imapclient.Client // nil until authenticated (TRANSACTION state)
	validity uint32
	msgs     []pop3Msg
}

func (s *pop3Session) run() {
	defer func() {
		if s.store != nil {
			s.store.Close()
		}
	}()
	greeting := pop3Greeting
	if s.up.gmail.Load() {
		greeting = pop3GmailGreeting
	}
	s.line(greeting)
	for {
		if s.w.Flush() != nil {
			return
		}
		s.conn.SetReadDeadline(time.Now().Add(pop3IdleTimeout))
		line, err := s.readLine()
		if err != nil {
			if errors.Is(err, errPOP3LineTooLong) {
				s.line("-ERR line too long")
				s.w.Flush()
			}
			return
		}
		cmd, arg, _ := strings.Cut(line, " ")
		if !s.command(strings.ToUpper(cmd), arg, line) {
			s.w.Flush()
			return
		}
	}
}

var errPOP3LineTooLong = errors.New("fake365: POP3 line too long")

func (s *pop3Session) readLine() (string, error) {
	var b []byte
	for {
		frag, err := s.r.ReadSlice('\n')
		b = append(b, frag...)
		if len(b) > pop3MaxLine {
			return "", errPOP3LineTooLong
		}
		if err == nil {
			break
		}
		if err != bufio.ErrBufferFull {
			return "", err
		}
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

func (s *pop3Session) line(text string) {
	s.w.WriteString(text)
	s.w.WriteString("\r\n")
}

// command runs one command; it reports false to end the connection.
func (s *pop3Session) command(cmd, arg, line string) bool {
	switch {
	case cmd == "CAPA":
		s.line("+OK")
		for _, c := range []string{"TOP", "UIDL", "SASL XOAUTH2", "USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"} {
			s.line(c)
		}
		s.line(".")
		return true
	case cmd == "QUIT":
		if s.store != nil && !s.update() {
			s.line("-ERR some deleted messages were not removed")
			return false
		}
		s.line("+OK Microsoft Exchange Server POP3 server signing off.")
		return false
	case s.store == nil:
		return s.authorizationCommand(cmd, arg, line)
	}
	s.transactionCommand(cmd, arg)
	return true
}

// authorizationCommand answers a command before the login (RFC 1939's
// AUTHORIZATION state). It returns false when the connection is to end.
func (s *pop3Session) authorizationCommand(cmd, arg, line string) bool {
	switch cmd {
	case "AUTH":
		return s.auth(arg, len(line))
	case "USER":
		s.line("+OK")
	case "PASS":
		s.up.failures.Add(1)
		s.line(pop3LoginDisabled)
	case "NOOP", "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET":
		s.line("-ERR command not valid in this state")
	default:
		s.line("-ERR Protocol error: unknown command.")
	}
	return true
}

// transactionCommand answers a command on the mailbox after the login
// (RFC 1939's TRANSACTION state).
func (s *pop3Session) transactionCommand(cmd, arg string) {
	switch cmd {
	case "NOOP":
		s.line("+OK")
	case "STAT":
		s.stat()
	case "LIST", "UIDL":
		s.list(cmd, arg)
	case "RETR":
		n, m := s.msg(arg)
		if m != nil {
			s.retr(n, m, -1)
		}
	case "TOP":
		s.top(arg)
	case "DELE":
		n, m := s.msg(arg)
		if m != nil {
			m.deleted = true
			fmt.Fprintf(s.w, "+OK message %d deleted\r\n", n)
		}
	case "RSET":
		for i := range s.msgs {
			s.msgs[i].deleted = false
		}
		s.line("+OK")
	case "AUTH", "USER", "PASS":
		s.line("-ERR command not valid in this state")
	default:
		s.line("-ERR Protocol error: unknown command.")
	}
}

// stat answers STAT: the number and total size of the messages not deleted.
func (s *pop3Session) stat() {
	n, size := 0, int64(0)
	for _, m := range s.msgs {
		if !m.deleted {
			n++
			size += m.size
		}
	}
	fmt.Fprintf(s.w, "+OK %d %d\r\n", n, size)
}

// top answers TOP msg lines.
func (s *pop3Session) top(arg string) {
	a, b, _ := strings.Cut(arg, " ")
	lines, err := strconv.Atoi(b)
	if err != nil || lines < 0 {
		s.line("-ERR usage: TOP msg lines")
		return
	}
	n, m := s.msg(a)
	if m != nil {
		s.retr(n, m, lines)
	}
}

// msg looks up a message number; it answers -ERR itself when there is no
// such (undeleted) message.
func (s *pop3Session) msg(arg string) (int, *pop3Msg) {
	n, err := strconv.Atoi(strings.TrimSpace(arg))
	if err != nil || n < 1 || n > len(s.msgs) {
		s.line("-ERR no such message")
		return 0, nil
	}
	m := &s.msgs[n-1]
	if m.deleted {
		fmt.Fprintf(s.w, "-ERR message %d already deleted\r\n", n)
		return 0, nil
	}
	return n, m
}

func (s *pop3Session) uidl(m *pop3Msg) string {
	return fmt.Sprintf("%08x%08x", s.validity, uint32(m.uid))
}

func (s *pop3Session) list(cmd, arg string) {
	if arg != "" {
		n, m := s.msg(arg)
		if m == nil {
			return
		}
		if cmd == "LIST" {
			fmt.Fprintf(s.w, "+OK %d %d\r\n", n, m.size)
		} else {
			fmt.Fprintf(s.w, "+OK %d %s\r\n", n, s.uidl(m))
		}
		return
	}
	s.line("+OK")
	for i := range s.msgs {
		m := &s.msgs[i]
		if m.deleted {
			continue
		}
		if cmd == "LIST" {
			fmt.Fprintf(s.w, "%d %d\r\n", i+1, m.size)
		} else {
			fmt.Fprintf(s.w, "%d %s\r\n", i+1, s.uidl(m))
		}
	}
	s.line(".")
}

// retr sends message m dot-stuffed; lines >= 0 makes it TOP: the header, the
// empty line and that many body lines.
func (s *pop3Session) retr(n int, m *pop3Msg, lines int) {
	body, err := s.fetch(m.uid)
	if err != nil {
		s.line("-ERR cannot read the message")
		return
	}
	if lines >= 0 {
		body = topOf(body, lines)
	}
	if lines < 0 {
		fmt.Fprintf(s.w, "+OK %d octets\r\n", m.size)
	} else {
		s.line("+OK")
	}
	atStart := true
	for len(body) > 0 {
		i := bytes.IndexByte(body, '\n')
		var ln []byte
		if i < 0 {
			ln, body = body, nil
		} else {
			ln, body = body[:i+1], body[i+1:]
		}
		if atStart && ln[0] == '.' {
			s.w.WriteByte('.')
		}
		s.w.Write(ln)
		atStart = ln[len(ln)-1] == '\n'
	}
	if !atStart {
		s.w.WriteString("\r\n")
	}
	s.line(".")
}

// topOf cuts msg after the header, its empty line and lines body lines.
func topOf(msg []byte, lines int) []byte {
	end := bytes.Index(msg, []byte("\r\n\r\n"))
	if end < 0 {
		return msg
	}
	i := end + 4
	for ; lines > 0 && i < len(msg); lines-- {
		j := bytes.IndexByte(msg[i:], '\n')
		if j < 0 {
			return msg
		}
		i += j + 1
	}
	return msg[:i]
}

func (s *pop3Session) fetch(uid imap.UID) ([]byte, error) {
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := s.store.Fetch(imap.UIDSetNum(uid), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		return nil, err
	}
	if len(msgs) != 1 {
		return nil, errors.New("fake365: message is gone")
	}
	return msgs[0].FindBodySection(section), nil
}

// auth runs AUTH XOAUTH2 (RFC 5034), with or without an initial response.
func (s *pop3Session) auth(arg string, lineLen int) bool {
	mech, ir, hasIR := strings.Cut(arg, " ")
	if !strings.EqualFold(mech, "XOAUTH2") {
		s.line("-ERR Unrecognized authentication type.")
		return true
	}
	if lim := s.up.irLimit.Load(); hasIR && lim > 0 && int64(lineLen) > lim {
		s.line("-ERR line too long")
		return true
	}
	if !hasIR {
		s.line("+ ")
		if s.w.Flush() != nil {
			return false
		}
		line, err := s.readLine()
		if err != nil {
			return false
		}
		if line == "*" {
			s.line("-ERR authentication cancelled")
			return true
		}
		ir = line
	}
	raw, err := base64.StdEncoding.DecodeString(ir)
	var user, token string
	if err == nil {
		user, token, err = parseXOAuth2(raw)
	}
	if err != nil || !s.up.authorize(user, token) {
		s.up.failures.Add(1)
		if s.up.gmail.Load() {
			s.line("+ " + base64.StdEncoding.EncodeToString([]byte(gmailErrorJSON)))
			if s.w.Flush() != nil {
				return false
			}
			if _, err := s.readLine(); err != nil {
				return false
			}
			s.line(pop3GmailAuthFailed)
			return true
		}
		s.line(pop3AuthFailed)
		return true
	}
	if err := s.open(user); err != nil {
		s.line("-ERR [SYS/TEMP] cannot open the mailbox")
		return true
	}
	s.up.logins.Add(1)
	s.line("+OK User successfully authenticated.")
	return true
}

// open logs in to the store and takes the maildrop listing, which stays
// fixed for the session (RFC 1939).
func (s *pop3Session) open(mailbox string) error {
	c, sel, err := s.up.store.openStore(mailbox)
	if err != nil {
		return err
	}
	var list []pop3Msg
	if sel.NumMessages > 0 {
		all := imap.SeqSet{}
		all.AddRange(1, 0)
		bufs, err := c.Fetch(all, &imap.FetchOptions{UID: true, RFC822Size: true}).Collect()
		if err != nil {
			c.Close()
			return err
		}
		for _, b := range bufs {
			list = append(list, pop3Msg{uid: b.UID, size: b.RFC822Size})
		}
	}
	s.store, s.validity, s.msgs = c, sel.UIDValidity, list
	return nil
}

// update removes the messages marked deleted (RFC 1939 UPDATE state).
func (s *pop3Session) update() bool {
	var uids imap.UIDSet
	for _, m := range s.msgs {
		if m.deleted {
			uids.AddNum(m.uid)
		}
	}
	if len(uids) == 0 {
		return true
	}
	store := &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}
	if err := s.store.Store(uids, store, nil).Close(); err != nil {
		return false
	}
	return s.store.UIDExpunge(uids).Close() == nil
}
