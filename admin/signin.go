package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"mailproxy/auth"
	"mailproxy/oauth"
	"mailproxy/oauth/store"
)

// Flows as the sign-in form names them and store.Meta records them.
const (
	flowAuthCode = "authcode"
	flowDevice   = "device"
)

// authFlow is a browser sign-in waiting for the identity provider's answer.
type authFlow struct {
	auth    *oauth.AuthCode
	account string
	session string // id of the session that started it
	expires time.Time
}

// deviceSignIn is a device code sign-in: the code shown, and the poll
// running in its own goroutine.
type deviceSignIn struct {
	id      string
	account string
	session string
	code    *oauth.DeviceCode
	cancel  context.CancelFunc
	expires time.Time

	// Set when the poll ends; protected by Server.mu.
	done    bool
	pending string // id of the pendingSet on success
	err     error
}

// pendingSet is a fresh token set waiting for the admin to choose the local
// password that seals it. It never leaves the server.
type pendingSet struct {
	id       string
	account  string
	session  string
	flow     string
	ts       oauth.TokenSet
	identity string
	expires  time.Time
}

// pruneLocked drops expired flows, device sign-ins and pending sets.
func (s *Server) pruneLocked(now time.Time) {
	for k, f := range s.flows {
		if !now.Before(f.expires) {
			delete(s.flows, k)
		}
	}
	for k, d := range s.devices {
		if !now.Before(d.expires) {
			d.cancel()
			delete(s.devices, k)
		}
	}
	for k, p := range s.pending {
		if !now.Before(p.expires) {
			delete(s.pending, k)
		}
	}
}

// oldestKey is the key of the entry of m that expires first: the one a
// full table drops to make room.
func oldestKey[V any](m map[string]V, expires func(V) time.Time) string {
	var key string
	var first time.Time
	for k, v := range m {
		if e := expires(v); key == "" || e.Before(first) {
			key, first = k, e
		}
	}
	return key
}

// redirectURL is where the identity provider sends the browser back.
func (s *Server) redirectURL(r *http.Request, p *oauth.Provider) string {
	if s.opts.RedirectURL != "" {
		return s.opts.RedirectURL
	}
	if p.RedirectURL != "" {
		return p.RedirectURL
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + callbackPath
}

// loginHint names who should sign in: the username, unless the account is a
// shared mailbox (then a delegate signs in, whom we do not know).
func loginHint(a AccountInfo) string {
	if a.Mailbox != "" && !strings.EqualFold(a.Mailbox, a.Username) {
		return ""
	}
	return a.Username
}

// handleSignIn starts a sign-in: the browser flow redirects to the identity
// provider; the device flow asks for a code and shows it.
func (s *Server) handleSignIn(w http.ResponseWriter, r *http.Request) {
	sess := s.postSession(w, r)
	if sess == nil {
		return
	}
	a, ok := s.account(r.PostForm.Get("account"))
	if !ok {
		s.renderError(w, r, http.StatusNotFound, "No such account", "The account is not in the configuration (was it removed by a reload?).")
		return
	}
	if a.Flow == FlowClientCredentials {
		s.renderError(w, r, http.StatusBadRequest, "Nothing to sign in",
			a.Username+" uses the app's own credentials (client_credentials): there is no user sign-in.")
		return
	}
	p := s.provider(a.Username)
	if !s.canSignIn() || p == nil {
		s.renderError(w, r, http.StatusInternalServerError, "Sign-in unavailable", "This page cannot sign accounts in (no provider is configured for "+a.Username+").")
		return
	}
	if r.PostForm.Get("method") == flowDevice {
		s.startDevice(w, r, sess, a, p)
		return
	}

	redirect := s.redirectURL(r, p)
	ru, err := url.Parse(redirect)
	if err != nil || ru.Host == "" {
		s.renderError(w, r, http.StatusInternalServerError, "Sign-in unavailable", fmt.Sprintf("The redirect URL %q is not valid.", redirect))
		return
	}
	if !strings.EqualFold(ru.Host, r.Host) {
		// The answer would reach another address, where this browser's
		// cookies do not go: the sign-in could not be tied to it.
		s.render(w, r, http.StatusConflict, "wronghost", page{Title: "Open the page at its sign-in address",
			Data: wrongHostData{Redirect: redirect, Page: ru.Scheme + "://" + ru.Host + "/"}})
		return
	}

	auth, authURL := oauth.NewAuthCode(p, redirect, loginHint(a))
	auth.Now = s.opts.Now
	now := s.now()
	s.mu.Lock()
	s.pruneLocked(now)
	if len(s.flows) >= maxFlows {
		delete(s.flows, oldestKey(s.flows, func(f *authFlow) time.Time { return f.expires }))
	}
	s.flows[auth.State()] = &authFlow{auth: auth, account: a.Username, session: sess.id, expires: now.Add(flowLifetime)}
	flowKey := sess.flowKey
	s.mu.Unlock()

	http.SetCookie(w, &http.Cookie{
		Name:     flowCookie,
		Value:    flowKey,
		Path:     callbackPath,
		MaxAge:   int(flowLifetime / time.Second),
		HttpOnly: true,
		Secure:   r.TLS != nil,
		SameSite: http.SameSiteLaxMode,
	})
	s.log.Info("admin: browser sign-in started", "account", a.Username, "provider", p.Name)
	http.Redirect(w, r, authURL, http.StatusSeeOther)
}

// handleCallback receives the identity provider's answer. It must carry
// the state of a sign-in started here, arrive in the browser that started
// it (flow cookie), and is redeemed at once; the page then asks for the
// local password.
func (s *Server) handleCallback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	state := q.Get("state")
	now := s.now()
	s.mu.Lock()
	f := s.flows[state]
	if f != nil {
		delete(s.flows, state) // one answer per sign-in, right or wrong
	}
	var sess *session
	if f != nil {
		sess = s.sessions[f.session]
	}
	s.mu.Unlock()
	if state == "" || f == nil {
		s.log.Warn("admin: sign-in answer with an unknown state refused", "remote", r.RemoteAddr)
		s.renderError(w, r, http.StatusBadRequest, "Unknown sign-in",
			"This answer does not belong to a sign-in started on this page (it is old, was already used, or the server restarted). Start the sign-in again.")
		return
	}
	if !now.Before(f.expires) || sess == nil {
		s.renderError(w, r, http.StatusBadRequest, "Sign-in expired", "The sign-in was started too long ago, or the admin session ended. Start it again.")
		return
	}
	c, err := r.Cookie(flowCookie)
	if err != nil || !secureEqual(c.Value, sess.flowKey) {
		s.log.Warn("admin: sign-in answer arrived in another browser; refused", "account", f.account, "remote", r.RemoteAddr)
		s.renderError(w, r, http.StatusForbidden, "Wrong browser",
			"This answer arrived in a browser other than the one that started the sign-in. Start the sign-in again in this browser.")
		return
	}

	ts, identity, err := f.auth.Exchange(r.Context(), q)
	if err != nil {
		s.log.Warn("admin: browser sign-in failed", "account", f.account, "err", err)
		s.renderSignInFailed(w, r, f.account, err)
		return
	}
	id := s.addPending(f.session, f.account, flowAuthCode, ts, identity)
	s.log.Info("admin: browser sign-in completed; waiting for the local password", "account", f.account, "identity", identity)
	s.renderPassword(w, r, http.StatusOK, sess, id, "")
}

func (s *Server) renderSignInFailed(w http.ResponseWriter, r *http.Request, account string, err error) {
	var hint string
	var te *oauth.TokenError
	if errors.As(err, &te) {
		hint = te.Hint()
	}
	code := http.StatusBadGateway
	if errors.Is(err, oauth.ErrDeclined) || errors.Is(err, oauth.ErrDeviceExpired) {
		code = http.StatusOK
	}
	s.render(w, r, code, "failed", page{Title: "Sign-in failed", Data: failedData{Account: account, Error: err.Error(), Hint: hint}})
}

// renderDeviceFailed is renderSignInFailed for the device flow: when the
// identity provider refused the flow itself (Conditional Access, no
// refresh token), the page says so and offers the browser sign-in.
func (s *Server) renderDeviceFailed(w http.ResponseWriter, r *http.Request, sess *session, account string, err error) {
	why := oauth.DeviceRefused(err)
	if why == "" || !s.canSignIn() {
		s.renderSignInFailed(w, r, account, err)
		return
	}
	s.render(w, r, http.StatusOK, "failed", page{Title: "Sign-in failed", CSRF: s.csrf(sess),
		Data: failedData{Account: account, Error: err.Error(), Browser: why}})
}

// addPending keeps a token set for the password form and returns its id.
func (s *Server) addPending(session, account, flow string, ts oauth.TokenSet, identity string) string {
	now := s.now()
	p := &pendingSet{id: randomID(), account: account, session: session, flow: flow, ts: ts, identity: identity,
		expires: now.Add(pendingLifetime)}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked(now)
	if len(s.pending) >= maxFlows {
		delete(s.pending, oldestKey(s.pending, func(p *pendingSet) time.Time { return p.expires }))
	}
	s.pending[p.id] = p
	return p.id
}

// renderPassword shows the form that sets the local password of a pending
// token set.
func (s *Server) renderPassword(w http.ResponseWriter, r *http.Request, code int, sess *session, id, problem string) {
	s.mu.Lock()
	p := s.pending[id]
	var d passwordData
	if p != nil {
		d = passwordData{ID: p.id, Account: p.account, Identity: p.identity}
	}
	s.mu.Unlock()
	d.Error, d.MinLen = problem, auth.MinPasswordLength
	s.render(w, r, code, "password", page{Title: "Set the local password", CSRF: s.csrf(sess), Data: d})
}

// handlePassword seals a pending token set with the password chosen twice.
func (s *Server) handlePassword(w http.ResponseWriter, r *http.Request) {
	sess := s.postSession(w, r)
	if sess == nil {
		return
	}
	id := r.PostForm.Get("id")
	now := s.now()
	s.mu.Lock()
	p := s.pending[id]
	if p != nil && (p.session != sess.id || !now.Before(p.expires)) {
		p = nil
	}
	if p != nil {
		delete(s.pending, id) // taken: a double submit cannot seal twice
	}
	s.mu.Unlock()
	if p == nil {
		s.renderError(w, r, http.StatusNotFound, "Sign-in not found",
			"No sign-in waits for a password under this form (it expired after 15 minutes, was completed already, or belongs to another session). Start the sign-in again.")
		return
	}
	putBack := func() {
		s.mu.Lock()
		s.pending[p.id] = p
		s.mu.Unlock()
	}
	pw, pw2 := r.PostForm.Get("password"), r.PostForm.Get("password2")
	switch {
	case pw == "":
		putBack()
		s.renderPassword(w, r, http.StatusUnprocessableEntity, sess, p.id, "Enter a password.")
		return
	case pw != pw2:
		putBack()
		s.renderPassword(w, r, http.StatusUnprocessableEntity, sess, p.id, "The two passwords differ.")
		return
	}
	if err := auth.CheckNewPassword(pw); err != nil {
		putBack()
		s.renderPassword(w, r, http.StatusUnprocessableEntity, sess, p.id, "Not accepted: "+err.Error()+".")
		return
	}
	err := s.opts.Seal(p.account, pw, p.ts, store.Meta{Identity: p.identity, Flow: p.flow})
	if err != nil {
		putBack()
		s.log.Error("admin: storing the new sign-in failed", "account", p.account, "err", err)
		s.renderPassword(w, r, http.StatusInternalServerError, sess, p.id, "The tokens could not be stored; the log says why. Try again.")
		return
	}
	s.log.Info("admin: account signed in", "account", p.account, "identity", p.identity, "flow", p.flow)
	msg := p.account + " is signed in."
	if p.identity != "" && !strings.EqualFold(p.identity, p.account) {
		msg = fmt.Sprintf("%s is signed in (as %s).", p.account, p.identity)
	}
	s.setFlash(sess, msg+" Mail clients log in with the password you just set.")
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// startDevice asks for a device code, starts polling for the answer in the
// background and shows the code.
func (s *Server) startDevice(w http.ResponseWriter, r *http.Request, sess *session, a AccountInfo, p *oauth.Provider) {
	if p.DeviceAuthURL == "" {
		s.renderError(w, r, http.StatusBadRequest, "No device sign-in", "The provider of "+a.Username+" has no device code endpoint. Use Sign in.")
		return
	}
	flow := &oauth.DeviceFlow{Provider: p, Now: s.opts.Now, Wait: s.deviceWait}
	sctx, cancel := context.WithTimeout(r.Context(), deviceStartLimit)
	dc, err := flow.Start(sctx)
	cancel()
	if err != nil {
		s.log.Warn("admin: device sign-in could not start", "account", a.Username, "err", err)
		s.renderDeviceFailed(w, r, sess, a.Username, err)
		return
	}
	now := s.now()
	expires := dc.Expiry
	if !expires.After(now) {
		expires = now.Add(flowLifetime)
	}
	pctx, pcancel := context.WithDeadline(s.ctx, expires)
	d := &deviceSignIn{id: randomID(), account: a.Username, session: sess.id, code: dc, cancel: pcancel, expires: expires.Add(pendingLifetime)}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		pcancel()
		s.renderError(w, r, http.StatusServiceUnavailable, "Shutting down", "mailproxy is stopping.")
		return
	}
	s.pruneLocked(now)
	if len(s.devices) >= maxFlows {
		k := oldestKey(s.devices, func(d *deviceSignIn) time.Time { return d.expires })
		s.devices[k].cancel()
		delete(s.devices, k)
	}
	s.devices[d.id] = d
	s.wg.Add(1)
	s.mu.Unlock()

	go func() {
		defer s.wg.Done()
		defer pcancel()
		ts, identity, err := flow.Poll(pctx, dc)
		if err == nil && ts.RefreshToken == "" {
			err = oauth.ErrNoRefreshToken
		}
		var pid string
		if err == nil {
			pid = s.addPending(d.session, d.account, flowDevice, ts, identity)
			s.log.Info("admin: device sign-in completed; waiting for the local password", "account", d.account, "identity", identity)
		} else if !errors.Is(err, context.Canceled) {
			s.log.Warn("admin: device sign-in failed", "account", d.account, "err", err)
		}
		s.mu.Lock()
		d.done, d.pending, d.err = true, pid, err
		s.mu.Unlock()
		if s.deviceDone != nil {
			s.deviceDone(d.id)
		}
	}()
	s.log.Info("admin: device sign-in started", "account", a.Username, "provider", p.Name)
	http.Redirect(w, r, "/device/"+d.id, http.StatusSeeOther)
}

// device returns the session's device sign-in id, or nil.
func (s *Server) device(sess *session, id string) *deviceSignIn {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[id]
	if d == nil || d.session != sess.id {
		return nil
	}
	return d
}

// handleDevicePage shows the code while the poll runs (refreshing every few
// seconds), then the password form or the failure.
func (s *Server) handleDevicePage(w http.ResponseWriter, r *http.Request) {
	sess := s.pageSession(w, r)
	if sess == nil {
		return
	}
	d := s.device(sess, r.PathValue("id"))
	if d == nil {
		s.renderError(w, r, http.StatusNotFound, "Sign-in not found", "No device sign-in of this browser has this address. Start the sign-in again.")
		return
	}
	s.mu.Lock()
	done, pid, err := d.done, d.pending, d.err
	s.mu.Unlock()
	switch {
	case !done:
		s.render(w, r, http.StatusOK, "device", page{Title: "Sign in with a code", CSRF: s.csrf(sess), Refresh: true, Data: deviceData{
			ID: d.id, Account: d.account, UserCode: d.code.UserCode, VerificationURI: d.code.VerificationURI,
			Expires: d.code.Expiry,
		}})
	case err != nil:
		s.renderDeviceFailed(w, r, sess, d.account, err)
	default:
		s.mu.Lock()
		_, waiting := s.pending[pid]
		s.mu.Unlock()
		if !waiting {
			http.Redirect(w, r, "/", http.StatusSeeOther)
			return
		}
		s.renderPassword(w, r, http.StatusOK, sess, pid, "")
	}
}

func (s *Server) handleDeviceCancel(w http.ResponseWriter, r *http.Request) {
	sess := s.postSession(w, r)
	if sess == nil {
		return
	}
	if d := s.device(sess, r.PathValue("id")); d != nil {
		d.cancel()
		s.mu.Lock()
		delete(s.devices, d.id)
		s.mu.Unlock()
		s.setFlash(sess, "The sign-in of "+d.account+" with a code was canceled.")
	}
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// handleSignOutPage asks for confirmation.
func (s *Server) handleSignOutPage(w http.ResponseWriter, r *http.Request) {
	sess := s.pageSession(w, r)
	if sess == nil {
		return
	}
	a, ok := s.account(r.URL.Query().Get("account"))
	if !ok || a.Flow == FlowClientCredentials || s.opts.Remove == nil {
		s.renderError(w, r, http.StatusNotFound, "No such account", "There is no signed-in account of that name.")
		return
	}
	s.render(w, r, http.StatusOK, "signout", page{Title: "Sign out " + a.Username, CSRF: s.csrf(sess), Data: signOutData{Account: a.Username}})
}

// handleSignOut removes the account's token entry.
func (s *Server) handleSignOut(w http.ResponseWriter, r *http.Request) {
	sess := s.postSession(w, r)
	if sess == nil {
		return
	}
	a, ok := s.account(r.PostForm.Get("account"))
	if !ok || a.Flow == FlowClientCredentials || s.opts.Remove == nil {
		s.renderError(w, r, http.StatusNotFound, "No such account", "There is no signed-in account of that name.")
		return
	}
	err := s.opts.Remove(a.Username)
	if errors.Is(err, store.ErrNotSignedIn) {
		s.setFlash(sess, a.Username+" was not signed in.")
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	if err != nil {
		s.log.Error("admin: sign-out failed", "account", a.Username, "err", err)
		s.renderError(w, r, http.StatusInternalServerError, "Sign-out failed", "The token entry of "+a.Username+" could not be removed; the log says why.")
		return
	}
	s.log.Info("admin: account signed out", "account", a.Username)
	s.setFlash(sess, a.Username+" is signed out: its stored tokens are deleted.")
	http.Redirect(w, r, "/", http.StatusSeeOther)
}
