package fake365

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-sasl"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Replies that mimic Exchange Online and Gmail. Clients (and our proxy)
// match on them, so they are spelled exactly like the real servers do.
const (
	exchangeAuthFailedText  = "AUTHENTICATE failed."
	exchangeLoginFailedText = "LOGIN failed."
	gmailAuthFailedText     = "Invalid credentials (Failure)"
	// byeTokenExpired is what Exchange Online says when the access token
	// used at AUTHENTICATE expires during the session.
	byeTokenExpired = "Session invalidated - AccessTokenExpired"
	// gmailErrorJSON is Gmail's XOAUTH2 error challenge.
	gmailErrorJSON = `{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`
)

// IMAPUpstream is a fake Exchange Online IMAP server: it accepts only
// AUTHENTICATE XOAUTH2 with tokens its TokenValidator knows, serves an
// in-memory store per mailbox and ends a session with
// "* BYE Session invalidated - AccessTokenExpired" when the token expires.
type IMAPUpstream struct {
	// Addr is the listening address, host:port on 127.0.0.1.
	Addr string

	validator TokenValidator
	srv       *imapserver.Server
	ln        *trackingListener
	records   *recordListener // nil: plain text
	serveDone chan struct{}
	closeOnce sync.Once
	closeErr  error

	gmail    atomic.Bool
	changes  changeSignal // wakes idling sessions (idle.go)
	logins   atomic.Int64
	failures atomic.Int64

	// The internal IMAP server the fake POP3 server reads the mailboxes
	// through (store.go); started on first use, then read-only.
	storeOnce sync.Once
	storeLn   *pipeListener
	storeSrv  *imapserver.Server

	mu        sync.Mutex                     // protects mailboxes, delegates and folders
	mailboxes map[string]*imapmemserver.User // key: lower-case address
	delegates delegations
	folders   map[string]map[string]struct{} // lower-case mailbox -> folder names (folders.go)
	// Exchange's setup failures by lower-case mailbox (exchange_errors.go).
	refuseApps, notConnected map[string]bool
}

// NewIMAPUpstream starts a fake IMAP server on 127.0.0.1:0 that checks tokens
// with v. With tlsCfg the listener speaks implicit TLS (like port 993);
// without it the server is plain text and allows authentication anyway.
func NewIMAPUpstream(v TokenValidator, tlsCfg *tls.Config) (*IMAPUpstream, error) {
	if v == nil {
		return nil, errors.New("fake365: new IMAP upstream: nil TokenValidator")
	}
	tl, err := listenTracking("IMAP")
	if err != nil {
		return nil, err
	}
	u := &IMAPUpstream{
		Addr:         tl.Addr().String(),
		validator:    v,
		ln:           tl,
		serveDone:    make(chan struct{}),
		mailboxes:    make(map[string]*imapmemserver.User),
		delegates:    make(delegations),
		folders:      make(map[string]map[string]struct{}),
		refuseApps:   make(map[string]bool),
		notConnected: make(map[string]bool),
	}
	var ln net.Listener = u.ln
	if tlsCfg != nil {
		u.records = newRecordListener(u.ln, tlsCfg)
		ln = u.records
	}
	u.srv = imapserver.New(&imapserver.Options{
		NewSession: u.newSession,
		Caps: imap.CapSet{
			imap.CapIMAP4rev1:   {},
			imap.CapNamespace:   {},
			imap.CapUIDPlus:     {},
			imap.CapMove:        {},
			imap.CapLiteralPlus: {},
			imap.CapSpecialUse:  {},
		},
		Logger: log.New(io.Discard, "", 0),
		// Every connection of the TLS listener is TLS, but imapserver
		// recognises only a bare *tls.Conn, and with SetRecordSize they
		// are wrapped; the plain listener exists for tests only.
		InsecureAuth: true,
	})
	go func() {
		defer close(u.serveDone)
		u.srv.Serve(ln)
	}()
	return u, nil
}

// Close stops the listener and closes every live connection.
func (u *IMAPUpstream) Close() error {
	u.closeOnce.Do(func() {
		u.closeErr = u.ln.shutdown(u.srv.Close, u.serveDone)
		u.closeStore()
	})
	if u.closeErr != nil {
		return fmt.Errorf("fake365: close IMAP upstream: %w", u.closeErr)
	}
	return nil
}

// AddMailbox creates the mailbox (an email address) with an empty INBOX and
// Exchange's StandardFolders. Adding an existing mailbox does nothing.
func (u *IMAPUpstream) AddMailbox(mailbox string) {
	key := strings.ToLower(mailbox)
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.mailboxes[key]; ok {
		return
	}
	// The memserver password is never used: Login is refused before it.
	user := imapmemserver.NewUser(mailbox, "")
	user.Create("INBOX", nil)
	u.addFolderLocked(key, "INBOX")
	for _, f := range StandardFolders {
		user.Create(f.Name, nil)
		u.addFolderLocked(key, f.Name)
	}
	u.mailboxes[key] = user
}

// Delegate lets tokens issued to username open mailbox (a shared mailbox
// with FullAccess for that user).
func (u *IMAPUpstream) Delegate(mailbox, username string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.delegates.add(mailbox, username)
}

// Append stores msg in folder of mailbox; the folder is created when
// missing. Sessions that selected the folder (IDLE included) see the new
// message.
func (u *IMAPUpstream) Append(mailbox, folder string, msg []byte) error {
	user := u.user(mailbox)
	if user == nil {
		return fmt.Errorf("fake365: append to %q: unknown mailbox", mailbox)
	}
	if strings.EqualFold(folder, "INBOX") {
		folder = "INBOX"
	}
	if _, err := user.Status(folder, &imap.StatusOptions{}); err != nil {
		if err := user.Create(folder, nil); err != nil {
			return fmt.Errorf("fake365: append to %q folder %q: create: %w", mailbox, folder, err)
		}
		u.folderChanged(mailbox, "", folder)
	}
	if _, err := user.Append(folder, bytes.NewReader(msg), &imap.AppendOptions{}); err != nil {
		return fmt.Errorf("fake365: append to %q folder %q: %w", mailbox, folder, err)
	}
	u.changes.broadcast()
	return nil
}

// SetRecordSize makes connections accepted from now on write TLS records
// of n bytes of plaintext (2048, 4096 or 16384, say), as real servers
// choose their own: a response longer than n arrives in records of n
// bytes. n <= 0 goes back to crypto/tls's default (small records for the
// first 128 KiB of a connection, then 16 KiB). It does nothing on a plain
// text server.
func (u *IMAPUpstream) SetRecordSize(n int) {
	if u.records != nil {
		u.records.setSize(n)
	}
}

// Logins returns the number of successful XOAUTH2 authentications.
func (u *IMAPUpstream) Logins() int { return int(u.logins.Load()) }

// AuthFailures returns the number of refused authentications: bad or
// unknown tokens, a user= the token may not open, malformed XOAUTH2
// responses, and LOGIN attempts.
func (u *IMAPUpstream) AuthFailures() int { return int(u.failures.Load()) }

// SetGmailStyle switches how a refused token is reported. false (default),
// Exchange Online: "<tag> NO AUTHENTICATE failed.". true, Gmail: a "+ "
// continuation carrying a base64 JSON error, and after the client's (empty)
// answer "<tag> NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)".
func (u *IMAPUpstream) SetGmailStyle(on bool) { u.gmail.Store(on) }

// Conns returns the number of open connections.
func (u *IMAPUpstream) Conns() int { return u.ln.open() }

// WaitConns blocks until exactly n connections are open or ctx ends, so
// tests can check for leaked upstream connections without sleeping.
func (u *IMAPUpstream) WaitConns(ctx context.Context, n int) error {
	return u.ln.waitOpen(ctx, n)
}

func (u *IMAPUpstream) user(mailbox string) *imapmemserver.User {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.mailboxes[strings.ToLower(mailbox)]
}

// authorize reports the store that token may open as mailbox, and the token
// expiry. Exchange rules: the token's own mailbox, a mailbox delegated to
// the token's user, or any mailbox for an app-only ("app:") token.
func (u *IMAPUpstream) authorize(mailbox, token string) (*imapmemserver.User, time.Time, bool) {
	if mailbox == "" || token == "" {
		return nil, time.Time{}, false
	}
	subject, expiry, ok := u.validator.Validate(token)
	if !ok {
		return nil, time.Time{}, false
	}
	key := strings.ToLower(mailbox)
	u.mu.Lock()
	defer u.mu.Unlock()
	user := u.mailboxes[key]
	if user == nil {
		return nil, time.Time{}, false
	}
	if !mayAct(subject, mailbox, u.delegates[key]) {
		return nil, time.Time{}, false
	}
	if strings.HasPrefix(subject, "app:") && u.refuseApps[key] {
		return nil, time.Time{}, false
	}
	return user, expiry, true
}

// delegations says who may open a mailbox besides its owner: lower-case
// mailbox -> lower-case usernames.
type delegations map[string]map[string]struct{}

func (d delegations) add(mailbox, username string) {
	key := strings.ToLower(mailbox)
	if d[key] == nil {
		d[key] = make(map[string]struct{})
	}
	d[key][strings.ToLower(username)] = struct{}{}
}

// mayAct reports whether a token for subject may act as mailbox.
func mayAct(subject, mailbox string, delegates map[string]struct{}) bool {
	if strings.HasPrefix(subject, "app:") {
		return true
	}
	if strings.EqualFold(subject, mailbox) {
		return true
	}
	_, ok := delegates[strings.ToLower(subject)]
	return ok
}

func (u *IMAPUpstream) newSession(conn *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
	return &imapSession{up: u, conn: conn}, nil, nil
}

// imapSession is one connection. UserSession stays nil until XOAUTH2
// succeeds; imapserver does not call the promoted methods before that.
type imapSession struct {
	*imapmemserver.UserSession

	up      *IMAPUpstream
	conn    *imapserver.Conn
	mailbox string // the XOAUTH2 user= of the session, once authenticated

	mu     sync.Mutex  // protects expiry and closed
	expiry *time.Timer // ends the session when the token expires
	closed bool
}

var (
	_ imapserver.SessionSASL      = (*imapSession)(nil)
	_ imapserver.SessionIMAP4rev2 = (*imapSession)(nil)
)

// Login refuses every password: Exchange Online has basic auth turned off.
func (s *imapSession) Login(username, password string) error {
	s.up.failures.Add(1)
	return &imap.Error{Type: imap.StatusResponseTypeNo, Text: exchangeLoginFailedText}
}

func (s *imapSession) AuthenticateMechanisms() []string { return []string{"XOAUTH2"} }

func (s *imapSession) Authenticate(mech string) (sasl.Server, error) {
	if mech != "XOAUTH2" {
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Text: "Unsupported authentication mechanism."}
	}
	return &xoauth2Server{check: s.login, gmail: s.up.gmail.Load()}, nil
}

// login is called with the parsed XOAUTH2 response.
func (s *imapSession) login(user, token string) bool {
	store, expiry, ok := s.up.authorize(user, token)
	if !ok {
		s.up.failures.Add(1)
		return false
	}
	s.up.logins.Add(1)
	s.mailbox = user
	s.UserSession = imapmemserver.NewUserSession(store)

	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed && !expiry.IsZero() {
		// imapserver has no API to end a session from outside the command
		// loop except Conn.Bye, which writes the BYE under the same lock as
		// every other response and then closes the socket; the command loop
		// then sees the closed connection and calls Close.
		s.expiry = time.AfterFunc(time.Until(expiry), func() {
			s.conn.Bye(byeTokenExpired)
		})
	}
	return true
}

func (s *imapSession) Close() error {
	s.mu.Lock()
	s.closed = true
	if s.expiry != nil {
		s.expiry.Stop()
	}
	s.mu.Unlock()
	return s.UserSession.Close()
}

// xoauth2Server is the server side of SASL XOAUTH2 as Exchange Online and
// Gmail speak it. go-sasl has none.
type xoauth2Server struct {
	check func(user, token string) bool
	gmail bool

	state int
}

const (
	xoStart  = iota // nothing received yet
	xoFailed        // Gmail style: error challenge sent, waiting for the empty answer
	xoDone
)

func (x *xoauth2Server) Next(response []byte) (challenge []byte, done bool, err error) {
	switch x.state {
	case xoStart:
		if response == nil {
			// No SASL-IR: ask for the response with an empty "+ ".
			return nil, false, nil
		}
		user, token, perr := parseXOAuth2(response)
		if perr == nil && x.check(user, token) {
			x.state = xoDone
			return nil, true, nil
		}
		if perr != nil {
			// A malformed response counts as a failed attempt too.
			x.check("", "")
		}
		if x.gmail {
			x.state = xoFailed
			return []byte(gmailErrorJSON), false, nil
		}
		x.state = xoDone
		return nil, false, &imap.Error{Type: imap.StatusResponseTypeNo, Text: exchangeAuthFailedText}
	case xoFailed:
		x.state = xoDone
		return nil, false, &imap.Error{
			Type: imap.StatusResponseTypeNo,
			Code: imap.ResponseCodeAuthenticationFailed,
			Text: gmailAuthFailedText,
		}
	default:
		return nil, false, errors.New("fake365: XOAUTH2 exchange already finished")
	}
}

// parseXOAuth2 splits the raw (decoded) XOAUTH2 response
// "user=" U "\x01auth=Bearer " T "\x01\x01".
func parseXOAuth2(resp []byte) (user, token string, err error) {
	s, ok := strings.CutSuffix(string(resp), "\x01\x01")
	if !ok {
		return "", "", errors.New("fake365: XOAUTH2 response does not end in ^A^A")
	}
	for _, field := range strings.Split(s, "\x01") {
		key, value, _ := strings.Cut(field, "=")
		switch key {
		case "user":
			user = value
		case "auth":
			scheme, t, ok := strings.Cut(value, " ")
			if !ok || !strings.EqualFold(scheme, "Bearer") {
				return "", "", errors.New("fake365: XOAUTH2 auth is not a Bearer token")
			}
			token = t
		}
	}
	if user == "" || token == "" {
		return "", "", errors.New("fake365: XOAUTH2 response lacks user or auth")
	}
	return user, token, nil
}
