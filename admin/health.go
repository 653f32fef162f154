package admin

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"mailproxy/front"
)

// UpstreamState is what the fronts last saw of one account's upstream for
// one protocol: the last login that really reached the upstream server and
// was accepted, and the last failure to reach or log in to it.
type UpstreamState struct {
	Proto       string    `json:"proto"`
	LastLogin   time.Time `json:"last_login,omitzero"`    // zero: none since the process started
	LastErrorAt time.Time `json:"last_error_at,omitzero"` // zero: none
	LastError   string    `json:"last_error,omitempty"`
}

// Failing reports whether the last upstream attempt failed.
func (u UpstreamState) Failing() bool { return u.LastErrorAt.After(u.LastLogin) }

// UpstreamError is one failure to reach or log in to an account's
// upstream, as the account page and `mailproxy status` list them.
type UpstreamError struct {
	At    time.Time `json:"at"`
	Proto string    `json:"proto"`
	Text  string    `json:"text"`
}

// RecentErrors is how many upstream errors are kept per account.
const RecentErrors = 10

var _ front.UpstreamObserver = (*Metrics)(nil)

// maxUpstreamError bounds the stored text of an upstream failure.
const maxUpstreamError = 300

// UpstreamResult implements front.UpstreamObserver.
func (m *Metrics) UpstreamResult(account, proto string, err error) {
	c := m.account(account)
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	defer m.healthGen.Add(1)
	if c.up == nil {
		c.up = make(map[string]UpstreamState)
	}
	st := c.up[proto]
	st.Proto = proto
	if err == nil {
		st.LastLogin = now
		c.lastLogin.Store(now.UnixNano())
		c.up[proto] = st
		return
	}
	text := upstreamErrorText(err)
	st.LastErrorAt, st.LastError = now, text
	c.up[proto] = st
	// The ring: newest last, the oldest dropped.
	if len(c.recent) == RecentErrors {
		copy(c.recent, c.recent[1:])
		c.recent = c.recent[:RecentErrors-1]
	}
	c.recent = append(c.recent, UpstreamError{At: now, Proto: proto, Text: text})
}

// upstreamErrorText is err as one bounded line with anything that looks
// like a credential (a long run of token characters: an access token, a
// base64 XOAUTH2 string a server echoed) replaced, so that it can be
// shown on the page, in /healthz and in state_dir.
func upstreamErrorText(err error) string {
	words := strings.Fields(err.Error())
	for i, w := range words {
		if looksLikeSecret(w) {
			words[i] = "<redacted>"
		}
	}
	text := strings.Join(words, " ")
	if len(text) > maxUpstreamError {
		text = text[:maxUpstreamError] + "..."
	}
	return text
}

// looksLikeSecret reports whether w (trimmed of quotes and punctuation) is
// 32 or more characters of base64, base64url or JWT alphabet with letters
// and digits mixed: no word of an error message, address or host name is.
func looksLikeSecret(w string) bool {
	w = strings.Trim(w, "\"'()[]<>,;:")
	if len(w) < 32 {
		return false
	}
	var letters, digits bool
	for _, r := range w {
		switch {
		case r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z':
			letters = true
		case r >= '0' && r <= '9':
			digits = true
		case r == '+' || r == '/' || r == '=' || r == '-' || r == '_' || r == '.':
		default:
			return false
		}
	}
	return letters && digits
}

// RecentUpstreamErrors returns account's last upstream errors (at most
// RecentErrors), newest first.
func (m *Metrics) RecentUpstreamErrors(account string) []UpstreamError {
	c := m.lookup(account)
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]UpstreamError, len(c.recent))
	for i, e := range c.recent {
		out[len(out)-1-i] = e
	}
	return out
}

// HealthGeneration changes whenever an upstream result was recorded: the
// daemon saves the health state for `mailproxy status` only when it did.
func (m *Metrics) HealthGeneration() int64 { return m.healthGen.Load() }

// Upstreams returns account's upstream state per protocol, sorted.
func (m *Metrics) Upstreams(account string) []UpstreamState {
	c := m.lookup(account)
	if c == nil {
		return nil
	}
	c.mu.Lock()
	out := make([]UpstreamState, 0, len(c.up))
	for _, u := range c.up {
		out = append(out, u)
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Proto < out[j].Proto })
	return out
}

// degradedReasons says what is wrong while the process itself is alive:
// accounts needing a sign-in, upstreams whose last login failed, rotated
// tokens that could not be saved. It names no account (/healthz needs no
// login); the page and `status` name them.
func (s *Server) degradedReasons() []string {
	var signIn, unsaved int
	failing := map[string][]string{} // proto -> distinct last errors
	for _, a := range s.accounts() {
		if a.Flow != FlowClientCredentials {
			st := s.status(a)
			if !st.SignedIn || st.NeedsSignIn {
				signIn++
			}
			if st.Unsaved {
				unsaved++
			}
		}
		for _, u := range s.metrics.Upstreams(a.Username) {
			if u.Failing() {
				failing[u.Proto] = append(failing[u.Proto], u.LastError)
			}
		}
	}
	var reasons []string
	if signIn > 0 {
		reasons = append(reasons, fmt.Sprintf("%d %s a sign-in by an admin", signIn, plural(signIn, "account needs", "accounts need")))
	}
	protos := make([]string, 0, len(failing))
	for p := range failing {
		protos = append(protos, p)
	}
	sort.Strings(protos)
	for _, p := range protos {
		errs := failing[p]
		reasons = append(reasons, fmt.Sprintf("%s upstream: the last login of %d %s failed: %s", p, len(errs), plural(len(errs), "account", "accounts"), errs[0]))
	}
	if unsaved > 0 {
		reasons = append(reasons, fmt.Sprintf("%d %s rotated tokens that could not be saved (disk full or not writable?)", unsaved, plural(unsaved, "account has", "accounts have")))
	}
	return reasons
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
