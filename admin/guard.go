package admin

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// What every request passes before it is routed, in this order:
//
//  1. Its Host names this page (hostAllowed): localhost, the loopback
//     addresses, the address the connection came in on, and the names the
//     daemon allows (admin.listen's host, the redirect URLs' hosts,
//     admin.hostnames). A page on evil.example whose name resolves to
//     127.0.0.1 sends "Host: evil.example" and gets 421 and no page, so DNS
//     rebinding cannot read or drive the page.
//  2. A state-changing request comes from this page (crossOriginOK): the
//     browser's Sec-Fetch-Site says same-origin, or its Origin names the
//     (allowed) Host; a request with neither header is refused too.
//  3. Without an admin password, the request belongs to a session that
//     presented the access token (?token=..., exchanged for a cookie), or,
//     for /metrics, carries it as a bearer or Basic credential. /healthz
//     needs nothing; /oauth2/callback is bound to the session that started
//     the sign-in by its own cookie and state.

// AccessTokenFile is the name of the access token's file in state_dir.
const AccessTokenFile = "admin-token"

// refusalLogEvery bounds how often one kind of refused request is logged.
const refusalLogEvery = 10 * time.Second

// guard runs the checks above; it reports whether the request may go on.
func (s *Server) guard(w http.ResponseWriter, r *http.Request) bool {
	if !s.hostAllowed(r) {
		s.refused("host", "admin: request for another host refused (421)", "host", r.Host, "remote", r.RemoteAddr)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusMisdirectedRequest)
		fmt.Fprintf(w, "421 Misdirected Request: this mailproxy admin page does not answer to the name %q.\nUse http://localhost:PORT/, or add the name to admin.hostnames.\n", hostOnly(r.Host))
		return false
	}
	if !s.crossOriginOK(r) {
		s.refused("origin", "admin: request from another site refused", "method", r.Method, "path", r.URL.Path,
			"origin", r.Header.Get("Origin"), "sec_fetch_site", r.Header.Get("Sec-Fetch-Site"), "remote", r.RemoteAddr)
		s.renderError(w, r, http.StatusForbidden, "Refused", "This request did not come from the mailproxy page.")
		return false
	}
	if s.opts.PasswordHash != "" || r.URL.Path == "/healthz" || r.URL.Path == callbackPath {
		return true
	}
	if tok, ok := r.URL.Query()["token"]; ok && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		s.exchangeToken(w, r, strings.Join(tok, ""))
		return false
	}
	if s.allowed(s.session(r)) {
		return true
	}
	if r.URL.Path == "/metrics" && s.credentialOK(r) {
		return true
	}
	s.refused("token", "admin: request without the access token refused", "path", r.URL.Path, "remote", r.RemoteAddr)
	if r.URL.Path == "/metrics" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="mailproxy"`)
	}
	s.renderError(w, r, http.StatusUnauthorized, "Open the page from its link",
		"This page needs its access token. On the mailproxy host, run `mailproxy admin-url` and open the link it prints; the link holds a secret that only someone who can read mailproxy's state directory has.")
	return false
}

// exchangeToken turns a valid ?token= into an authorized session and
// redirects to the same address without the token, so that it does not
// stay in the address bar or the history.
func (s *Server) exchangeToken(w http.ResponseWriter, r *http.Request, tok string) {
	if !secureEqual(tok, s.opts.AccessToken) {
		s.refused("token", "admin: wrong access token refused", "remote", r.RemoteAddr)
		s.renderError(w, r, http.StatusForbidden, "This link is not valid",
			"Its access token is not the current one. On the mailproxy host, run `mailproxy admin-url` for the current link.")
		return
	}
	s.newSession(w, r, true)
	q := r.URL.Query()
	q.Del("token")
	next := url.URL{Path: r.URL.Path, RawQuery: q.Encode()}
	s.log.Info("admin: access token accepted; new session", "remote", remoteIP(r))
	http.Redirect(w, r, safeNext(next.String()), http.StatusSeeOther)
}

// credentialOK accepts the access token or the admin password as a bearer
// token or the password of HTTP Basic auth (any user name), for scrapers
// of /metrics.
func (s *Server) credentialOK(r *http.Request) bool {
	var secret string
	if _, pw, ok := r.BasicAuth(); ok {
		secret = pw
	} else if b, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		secret = strings.TrimSpace(b)
	}
	if secret == "" {
		return false
	}
	if secureEqual(secret, s.opts.AccessToken) {
		return true
	}
	return s.opts.PasswordHash != "" && s.passwordCached(r, secret)
}

// crossOriginOK reports whether a request may change state. Safe methods
// always may. Others must show where they come from, and that must be this
// page: net/http's CrossOriginProtection decides (Sec-Fetch-Site, else
// Origin against Host); a request with neither header, which no current
// browser sends for a form, is refused as well, so the check never rests on
// the CSRF token alone.
func (s *Server) crossOriginOK(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return true
	}
	if r.Header.Get("Sec-Fetch-Site") == "" && r.Header.Get("Origin") == "" {
		return false
	}
	return s.cop.Check(r) == nil
}

// hostAllowed reports whether the request's Host names this page.
func (s *Server) hostAllowed(r *http.Request) bool {
	host := hostOnly(r.Host)
	if host == "" {
		return false
	}
	switch host {
	case "localhost", "127.0.0.1", "::1":
		return true
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		// An address is no name another site controls: a browser that
		// sends it loaded the page from that address. The one the
		// connection came in on is ours.
		if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			if ap, err := netip.ParseAddrPort(la.String()); err == nil && ap.Addr().Unmap() == ip.Unmap() {
				return true
			}
		}
		if ip.Unmap().IsLoopback() {
			return true
		}
	}
	if s.opts.AllowedHosts != nil {
		for _, h := range s.opts.AllowedHosts() {
			if strings.EqualFold(h, host) {
				return true
			}
		}
	}
	return false
}

// hostOnly returns the host of a Host header: lowercased, without port,
// brackets or a trailing dot.
func hostOnly(hostport string) string {
	h := hostport
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		h = host
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	return strings.ToLower(strings.TrimSuffix(h, "."))
}

// refused logs a refused request, at most once per refusalLogEvery per
// kind, with the number left out since the last line.
func (s *Server) refused(kind, msg string, args ...any) {
	now := s.now()
	s.refusalMu.Lock()
	st := s.refusals[kind]
	if st == nil {
		st = &refusalState{}
		s.refusals[kind] = st
	}
	if !st.last.IsZero() && now.Sub(st.last) < refusalLogEvery {
		st.skipped++
		s.refusalMu.Unlock()
		return
	}
	skipped := st.skipped
	st.last, st.skipped = now, 0
	s.refusalMu.Unlock()
	if skipped > 0 {
		args = append(args, "not_logged_since_last", skipped)
	}
	s.log.Warn(msg, args...)
}

type refusalState struct {
	last    time.Time
	skipped int
}

// LoadAccessToken returns the admin page's access token kept in
// stateDir/admin-token, creating it (256 random bits, mode 0600) when there
// is none. A file that other users can read is refused: the token is worth
// as much as the page.
func LoadAccessToken(stateDir string) (string, error) {
	path := filepath.Join(stateDir, AccessTokenFile)
	if tok, err := readAccessToken(path); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return tok, err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return "", fmt.Errorf("admin access token: %w", err)
	}
	f, err := os.CreateTemp(stateDir, AccessTokenFile+".*.tmp") // mode 0600
	if err != nil {
		return "", fmt.Errorf("admin access token: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.WriteString(randomID() + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("admin access token: %w", err)
	}
	// Link, not rename: when two processes create it at once, the first
	// wins and both read its token.
	if err := os.Link(tmp, path); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("admin access token: %w", err)
	}
	return readAccessToken(path)
}

func readAccessToken(path string) (string, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("admin access token: %s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("admin access token: %s can be read by other users (mode %04o); remove it and restart mailproxy for a new one", path, fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("admin access token: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if len(tok) < 32 {
		return "", fmt.Errorf("admin access token: %s is damaged (too short); remove it and restart mailproxy for a new one", path)
	}
	return tok, nil
}

// AccessURL is the link that opens the page at listen (admin.listen) with
// token: https when the page is served over TLS, host localhost when listen
// is a loopback or wildcard address.
func AccessURL(listen string, useTLS bool, token string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		host, port = "localhost", "8025"
	}
	if ip, err := netip.ParseAddr(host); host == "" || err == nil && (ip.IsLoopback() || ip.IsUnspecified()) {
		host = "localhost"
	}
	u := url.URL{Scheme: "http", Host: net.JoinHostPort(host, port), Path: "/"}
	if useTLS {
		u.Scheme = "https"
	}
	if token != "" {
		u.RawQuery = url.Values{"token": {token}}.Encode()
	}
	return u.String()
}
