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
	Proto       string
	LastLogin   time.Time // zero: none since the process started
	LastErrorAt time.Time // zero: none
	LastError   string
}

// Failing reports whether the last upstream attempt failed.
func (u UpstreamState) Failing() bool { return u.LastErrorAt.After(u.LastLogin) }

var _ front.UpstreamObserver = (*Metrics)(nil)

// maxUpstreamError bounds the stored text of an upstream failure.
const maxUpstreamError = 300

// UpstreamResult implements front.UpstreamObserver.
func (m *Metrics) UpstreamResult(account, proto string, err error) {
	c := m.account(account)
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.up == nil {
		c.up = make(map[string]UpstreamState)
	}
	st := c.up[proto]
	st.Proto = proto
	if err == nil {
		st.LastLogin = now
		c.lastLogin.Store(now.UnixNano())
	} else {
		text := strings.Join(strings.Fields(err.Error()), " ")
		if len(text) > maxUpstreamError {
			text = text[:maxUpstreamError] + "..."
		}
		st.LastErrorAt, st.LastError = now, text
	}
	c.up[proto] = st
}

// Upstreams returns account's upstream state per protocol, sorted.
func (m *Metrics) Upstreams(account string) []UpstreamState {
	m.mu.RLock()
	c := m.accounts[strings.ToLower(account)]
	m.mu.RUnlock()
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
