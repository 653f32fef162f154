package fake365

import (
	"errors"
	"io"
	"log"
	"net"
	"sync"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// The mailboxes of the fake IMAP server are imapmemserver users, whose
// messages can only be read through an IMAP session. The fake POP3 server
// therefore reads and deletes through one: an imapserver over in-memory
// pipes, logged in as the mailbox without a password, which no network
// client can reach. IMAP and POP3 clients so see one store: a message
// delivered by SMTP, or appended by IMAP, is there for POP3, and a POP3
// DELE is an IMAP expunge.

// openStore returns an IMAP client logged in to mailbox, with INBOX
// selected, and what SELECT said.
func (u *IMAPUpstream) openStore(mailbox string) (*imapclient.Client, *imap.SelectData, error) {
	if u.user(mailbox) == nil {
		return nil, nil, errors.New("fake365: unknown mailbox")
	}
	u.storeOnce.Do(u.startStore)
	if u.storeLn == nil {
		return nil, nil, net.ErrClosed // closed before first use
	}
	nc, err := u.storeLn.dial()
	if err != nil {
		return nil, nil, err
	}
	c := imapclient.New(nc, nil)
	if err := c.Login(mailbox, "").Wait(); err != nil {
		c.Close()
		return nil, nil, err
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, sel, nil
}

func (u *IMAPUpstream) startStore() {
	u.storeLn = newPipeListener()
	u.storeSrv = imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return &storeSession{up: u}, nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapUIDPlus: {}},
		Logger:       log.New(io.Discard, "", 0),
		InsecureAuth: true,
	})
	go u.storeSrv.Serve(u.storeLn)
}

// closeStore stops the internal server, if it was started.
func (u *IMAPUpstream) closeStore() {
	u.storeOnce.Do(func() {}) // no start after this
	if u.storeSrv != nil {
		u.storeSrv.Close()
		u.storeLn.Close()
	}
}

// storeSession is an internal IMAP session: LOGIN takes the mailbox name
// and no password.
type storeSession struct {
	*imapmemserver.UserSession
	up *IMAPUpstream
}

func (s *storeSession) Login(username, _ string) error {
	user := s.up.user(username)
	if user == nil {
		return imapserver.ErrAuthFailed
	}
	s.UserSession = imapmemserver.NewUserSession(user)
	return nil
}

func (s *storeSession) Close() error {
	if s.UserSession == nil {
		return nil
	}
	return s.UserSession.Close()
}

// pipeListener is a net.Listener whose connections are net.Pipe ends.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) dial() (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "fake365-store" }
