package admin

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"mailproxy/auth"
	"mailproxy/internal/wait"
)

// Cookies. The session cookie is SameSite=Strict: a browser never sends it
// with a request another site started. The flow cookie binds a browser
// sign-in to the browser that started it; it is SameSite=Lax because the
// identity provider's redirect back to /oauth2/callback is a cross-site
// navigation, which carries no Strict cookie.
const (
	sessionCookie = "mailproxy_session"
	flowCookie    = "mailproxy_flow"
	callbackPath  = "/oauth2/callback"
)

// session is one browser's visit. Without a password every session may act;
// with one, only a session that logged in.
type session struct {
	id      string
	csrf    string // the token every form of the session carries
	flowKey string // the flow cookie's value for sign-ins this session starts
	authed  bool
	created time.Time
	seen    time.Time // last request; the least recently seen session goes first when there are too many
	flash   string    // a message for the next page
}

// failures counts failed admin logins from one address.
type failures struct {
	n    int
	last time.Time
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // never fails since Go 1.24
	return b
}

// randomID returns an unguessable identifier (256 bits).
func randomID() string { return base64.RawURLEncoding.EncodeToString(randomBytes(32)) }

// secureEqual compares secrets in constant time.
func secureEqual(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// session returns the request's session, or nil. An expired one is removed.
func (s *Server) session(r *http.Request) *session {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return nil
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.sessions[c.Value]
	if sess == nil {
		return nil
	}
	if now.Sub(sess.created) > sessionLifetime {
		delete(s.sessions, sess.id)
		return nil
	}
	sess.seen = now
	return sess
}

// newSession makes a session and sets its cookie.
func (s *Server) newSession(w http.ResponseWriter, r *http.Request, authed bool) *session {
	now := s.now()
	sess := &session{id: randomID(), csrf: randomID(), flowKey: randomID(), authed: authed, created: now, seen: now}
	s.mu.Lock()
	for id, old := range s.sessions {
		if now.Sub(old.created) > sessionLifetime {
			delete(s.sessions, id)
		}
	}
	if len(s.sessions) >= maxSessions {
		// Clients that never send the cookie back (health probes
		// fetching /) leave sessions nobody uses again: drop the least
		// recently seen, not the admin's.
		var idle *session
		for _, old := range s.sessions {
			if idle == nil || old.seen.Before(idle.seen) {
				idle = old
			}
		}
		delete(s.sessions, idle.id)
	}
	s.sessions[sess.id] = sess
	s.mu.Unlock()
	http.SetCookie(w, &http.Cookie{
		Name:     sessionCookie,
		Value:    sess.id,
		Path:     "/",
		HttpOnly: true,
		Secure:   r.TLS != nil,
		SameSite: http.SameSiteStrictMode,
	})
	return sess
}

func (s *Server) dropSession(sess *session) {
	s.mu.Lock()
	delete(s.sessions, sess.id)
	s.mu.Unlock()
}

// allowed reports whether sess may see pages and act: it logged in with
// the admin password or presented the access token.
func (s *Server) allowed(sess *session) bool {
	if sess == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return sess.authed
}

// pageSession returns the session for a GET page. With a password and no
// logged-in session it redirects to the login form and returns nil.
// Without a password the guard let only sessions that presented the access
// token through.
func (s *Server) pageSession(w http.ResponseWriter, r *http.Request) *session {
	sess := s.session(r)
	if s.allowed(sess) {
		return sess
	}
	if s.opts.PasswordHash == "" {
		s.renderError(w, r, http.StatusUnauthorized, "Open the page from its link", "Run `mailproxy admin-url` on the mailproxy host and open the link it prints.")
		return nil
	}
	http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
	return nil
}

// postSession checks a state-changing request: it must come from our own
// page (Origin or Referer, when the browser sends one), carry the
// session's CSRF token, and, with a password, come from a logged-in
// session. Otherwise it answers 403 and returns nil.
func (s *Server) postSession(w http.ResponseWriter, r *http.Request) *session {
	sess, ok := s.checkForm(w, r)
	if !ok {
		return nil
	}
	if !s.allowed(sess) {
		s.renderError(w, r, http.StatusForbidden, "Log in first", "This action needs an admin login.")
		return nil
	}
	return sess
}

// checkForm checks the CSRF token of a POST; where it came from the guard
// checked before routing.
func (s *Server) checkForm(w http.ResponseWriter, r *http.Request) (*session, bool) {
	if err := r.ParseForm(); err != nil {
		s.renderError(w, r, http.StatusBadRequest, "Bad request", "The form could not be read.")
		return nil, false
	}
	sess := s.session(r)
	var want string
	if sess != nil {
		s.mu.Lock()
		want = sess.csrf
		s.mu.Unlock()
	}
	if sess == nil || !secureEqual(r.PostForm.Get("csrf"), want) {
		s.renderError(w, r, http.StatusForbidden, "The form has expired",
			"It was sent without this browser's session token (the page is old, or another site sent it). Go back to the start page and try again.")
		return nil, false
	}
	return sess, true
}

// setFlash leaves a message for the session's next page.
func (s *Server) setFlash(sess *session, msg string) {
	s.mu.Lock()
	sess.flash = msg
	s.mu.Unlock()
}

func (s *Server) takeFlash(sess *session) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	msg := sess.flash
	sess.flash = ""
	return msg
}

func (s *Server) csrf(sess *session) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sess.csrf
}

// safeNext returns next when it is a path on this site, else "/".
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, `/\`) {
		return "/"
	}
	if u, err := url.Parse(next); err != nil || u.Host != "" || u.Scheme != "" {
		return "/"
	}
	return next
}

func (s *Server) handleLoginPage(w http.ResponseWriter, r *http.Request) {
	next := safeNext(r.URL.Query().Get("next"))
	if s.opts.PasswordHash == "" {
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	sess := s.session(r)
	if s.allowed(sess) {
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	if sess == nil {
		sess = s.newSession(w, r, false)
	}
	s.render(w, r, http.StatusOK, "login", page{Title: "Log in", CSRF: s.csrf(sess), Data: loginData{Next: next}})
}

// handleLogin checks the admin password. Failed attempts from an address
// make its next attempts wait (doubling up to loginFailMax), and only one
// password check runs at a time, so that guessing is slow and cannot
// exhaust memory with parallel Argon2id runs.
func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	if s.opts.PasswordHash == "" {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	sess, ok := s.checkForm(w, r)
	if !ok {
		return
	}
	next := safeNext(r.PostForm.Get("next"))
	ip := remoteIP(r)
	if wait.Sleep(r.Context(), s.loginDelay(ip)) != nil {
		return
	}
	select {
	case s.loginSlot <- struct{}{}:
	case <-r.Context().Done():
		return
	}
	good, err := verifyPassword(s.opts.PasswordHash, r.PostForm.Get("password"))
	<-s.loginSlot
	if err != nil {
		s.log.Error("admin: the admin password hash is malformed", "err", err)
	}
	if !good {
		s.loginFailed(ip)
		s.log.Warn("admin: failed login", "remote", ip)
		s.render(w, r, http.StatusForbidden, "login", page{Title: "Log in", CSRF: s.csrf(sess),
			Data: loginData{Next: next, Error: "Wrong password."}})
		return
	}
	s.mu.Lock()
	delete(s.fails, ip)
	s.mu.Unlock()
	// A new session id after login: a session id planted before cannot
	// ride on this login.
	s.dropSession(sess)
	s.newSession(w, r, true)
	s.log.Info("admin: login", "remote", ip)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request) {
	sess, ok := s.checkForm(w, r)
	if !ok {
		return
	}
	s.dropSession(sess)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	if s.opts.PasswordHash == "" {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// loginDelay returns how long a login attempt from ip waits.
func (s *Server) loginDelay(ip string) time.Duration {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.fails[ip]
	if f == nil || f.n == 0 {
		return 0
	}
	if now.Sub(f.last) > loginFailWindow {
		delete(s.fails, ip)
		return 0
	}
	d := s.failDelay
	for i := 1; i < f.n && d < loginFailMax; i++ {
		d *= 2
	}
	return min(d, loginFailMax)
}

func (s *Server) loginFailed(ip string) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.fails[ip]
	if f == nil {
		if len(s.fails) >= maxSessions {
			clear(s.fails)
		}
		f = &failures{}
		s.fails[ip] = f
	}
	f.n++
	f.last = now
}

// metricsAllowed lets a logged-in session, the access token or the admin
// password (bearer, or HTTP Basic with any user name) read /metrics:
// scrapers cannot fill in a form.
func (s *Server) metricsAllowed(w http.ResponseWriter, r *http.Request) bool {
	if s.allowed(s.session(r)) || s.credentialOK(r) {
		return true
	}
	w.Header().Set("WWW-Authenticate", `Basic realm="mailproxy metrics", charset="UTF-8"`)
	s.renderError(w, r, http.StatusUnauthorized, "Log in first", "/metrics needs the admin password (HTTP Basic auth, any user name, or a bearer token), the access token, or an admin login.")
	return false
}

// passwordCached checks pw against the admin password. An accepted
// password is remembered as an HMAC under a random per-process key, so
// that scrapes do not pay Argon2id each time; failures slow the address
// down as failed logins do.
func (s *Server) passwordCached(r *http.Request, pw string) bool {
	m := hmac.New(sha256.New, s.basicKey[:])
	m.Write([]byte(pw))
	mac := m.Sum(nil)
	s.mu.Lock()
	cached := s.basicMAC != nil && hmac.Equal(mac, s.basicMAC)
	s.mu.Unlock()
	if cached {
		return true
	}
	ip := remoteIP(r)
	if wait.Sleep(r.Context(), s.loginDelay(ip)) != nil {
		return false
	}
	select {
	case s.loginSlot <- struct{}{}:
	case <-r.Context().Done():
		return false
	}
	good, _ := verifyPassword(s.opts.PasswordHash, pw)
	<-s.loginSlot
	if !good {
		s.loginFailed(ip)
		return false
	}
	s.mu.Lock()
	s.basicMAC = mac
	s.mu.Unlock()
	return true
}

// verifyPassword checks the admin password against its Argon2id hash.
func verifyPassword(phc, password string) (bool, error) {
	if password == "" {
		return false, nil
	}
	return auth.VerifyPassword(phc, password)
}
