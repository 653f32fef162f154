package smtp

import (
	"net/netip"

	"mailproxy/auth"
	"mailproxy/front"
	"mailproxy/submit"
)

// Intake routes some mail through the device relay's spool instead of
// straight upstream (docs/DEVICES.md). The Submitters it returns answer
// Data once the message is on disk, with its queue id.
type Intake interface {
	// Anonymous returns the spool session for a client at remote that did
	// not authenticate, or nil when remote is no [[device]] that may send
	// without AUTH (the client then gets 530, as before).
	Anonymous(remote netip.Addr) (sub submit.Submitter, device string)
	// Authenticated returns the spool session for a login (a device's own
	// credential, or an account with spool = true), or nil to keep the
	// pass-through.
	Authenticated(g *auth.Grant, remote netip.Addr) submit.Submitter
}

// anonymous lets a device send without AUTH: it sets up the session's
// spool Submitter, once. Called with s.mu held.
func (s *session) anonymous() bool {
	if s.anon {
		return true
	}
	if s.srv.Intake == nil || s.up != nil || s.grant != nil {
		return false
	}
	sub, device := s.srv.Intake.Anonymous(front.RemoteAddr(s.nc))
	if sub == nil {
		return false
	}
	if err := s.setUp(sub); err != nil {
		return false
	}
	s.anon = true
	s.log = s.log.With("device", device)
	s.c.setAccount("device:"+device, "spool")
	s.log.Debug("smtp: device sends without AUTH into the spool")
	return true
}

// authorized reports whether the session may start a transaction.
func (s *session) authorized() bool { return s.grant != nil || s.anon }

// spoolFor returns the spool session for the session's login or device,
// or nil for the pass-through.
func (s *session) spoolFor() submit.Submitter {
	switch {
	case s.srv.Intake == nil:
		return nil
	case s.anon: // a new spool session after the last one was dropped
		sub, _ := s.srv.Intake.Anonymous(front.RemoteAddr(s.nc))
		return sub
	case s.grant == nil:
		return nil
	}
	return s.srv.Intake.Authenticated(s.grant, front.RemoteAddr(s.nc))
}
