package fake365

import (
	"sync"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
)

// IDLE. imapmemserver's own Idle (go-imap v2.0.0-beta.8) loses updates:
// SessionTracker.Idle registers for notifications only when it starts, after
// imapserver has sent "+ idling", and does not flush what was queued before,
// so a message appended between the session's last command and that moment
// is reported only when a later change wakes the session, or never. A
// client that IDLEs right after SELECT, while another session or the test
// harness appends, then waits in vain (a flaky "no * 1 EXISTS during IDLE").
//
// The fake therefore runs IDLE itself: it subscribes to the upstream's
// change signal first, then polls the session's queued updates, then waits
// for the next change or DONE. Every change made after the subscription
// closes the channel it waits on; every change made before it is in the
// queue the poll flushes. Polls run on this one goroutine while the command
// loop only waits for DONE, so updates stay in order.

// changeSignal is a broadcast: wait returns a channel that is closed at the
// next broadcast. The zero value is ready to use.
type changeSignal struct {
	mu sync.Mutex
	ch chan struct{}
}

func (c *changeSignal) wait() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ch == nil {
		c.ch = make(chan struct{})
	}
	return c.ch
}

func (c *changeSignal) broadcast() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ch != nil {
		close(c.ch)
		c.ch = nil
	}
}

func (s *imapSession) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	for {
		changed := s.up.changes.wait()
		if err := s.UserSession.Poll(w, true); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stop:
			return nil
		}
	}
}

// The commands that change a mailbox's messages wake the idling sessions
// once imapmemserver has queued the change for them.

func (s *imapSession) Append(mailbox string, r imap.LiteralReader, options *imap.AppendOptions) (*imap.AppendData, error) {
	defer s.up.changes.broadcast()
	return s.UserSession.Append(mailbox, r, options)
}

func (s *imapSession) Store(w *imapserver.FetchWriter, numSet imap.NumSet, flags *imap.StoreFlags, options *imap.StoreOptions) error {
	defer s.up.changes.broadcast()
	return s.UserSession.Store(w, numSet, flags, options)
}

func (s *imapSession) Expunge(w *imapserver.ExpungeWriter, uids *imap.UIDSet) error {
	defer s.up.changes.broadcast()
	return s.UserSession.Expunge(w, uids)
}

func (s *imapSession) Copy(numSet imap.NumSet, dest string) (*imap.CopyData, error) {
	defer s.up.changes.broadcast()
	return s.UserSession.Copy(numSet, dest)
}

func (s *imapSession) Move(w *imapserver.MoveWriter, numSet imap.NumSet, dest string) error {
	defer s.up.changes.broadcast()
	return s.UserSession.Move(w, numSet, dest)
}
