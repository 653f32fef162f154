package admin

import (
	"bufio"
	"fmt"
	"io"
	"mailproxy/front"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var _ front.Metrics = (*Metrics)(nil)

// Metrics counts what the fronts report (front.Metrics) and token refreshes,
// for /metrics and the account table. Every method is safe for concurrent
// use and costs a map lookup under a read lock and an atomic add.
type Metrics struct {
	refreshOK, refreshFailed atomic.Int64
	submitted, rejected      atomic.Int64
	healthGen                atomic.Int64 // counts upstream results (health.go)

	mu       sync.RWMutex // protects the maps, not the counters they point to
	protos   map[string]*protoCounters
	accounts map[string]*accountCounters // by lower-cased username
}

type protoCounters struct {
	open, total          atomic.Int64
	loginOK, loginFailed atomic.Int64
	upstreamAuthFailed   atomic.Int64
	toUpstream, toClient atomic.Int64
}

type accountCounters struct {
	sessions  atomic.Int64
	lastLogin atomic.Int64 // unix nanoseconds of the last upstream login that happened; 0: none

	mu     sync.Mutex               // protects up and recent
	up     map[string]UpstreamState // by protocol (health.go)
	recent []UpstreamError          // the last RecentErrors upstream errors, oldest first
}

// NewMetrics returns empty counters. The series of protos (the daemon's
// fronts) exist from the start, at zero, so that a dashboard sees them
// before the first connection.
func NewMetrics(protos ...string) *Metrics {
	m := &Metrics{
		protos:   make(map[string]*protoCounters),
		accounts: make(map[string]*accountCounters),
	}
	for _, p := range protos {
		m.protos[p] = &protoCounters{}
	}
	return m
}

func (m *Metrics) proto(name string) *protoCounters {
	m.mu.RLock()
	c := m.protos[name]
	m.mu.RUnlock()
	if c != nil {
		return c
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if c = m.protos[name]; c == nil {
		c = &protoCounters{}
		m.protos[name] = c
	}
	return c
}

func (m *Metrics) account(name string) *accountCounters {
	name = strings.ToLower(name)
	m.mu.RLock()
	c := m.accounts[name]
	m.mu.RUnlock()
	if c != nil {
		return c
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if c = m.accounts[name]; c == nil {
		c = &accountCounters{}
		m.accounts[name] = c
	}
	return c
}

// lookup returns the counters of account; nil when it has none yet.
func (m *Metrics) lookup(account string) *accountCounters {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.accounts[strings.ToLower(account)]
}

// ConnOpened implements front.Metrics.
func (m *Metrics) ConnOpened(proto string) {
	c := m.proto(proto)
	c.open.Add(1)
	c.total.Add(1)
}

// ConnClosed implements front.Metrics.
func (m *Metrics) ConnClosed(proto string) { m.proto(proto).open.Add(-1) }

// Login implements front.Metrics.
func (m *Metrics) Login(proto string, ok bool) {
	if ok {
		m.proto(proto).loginOK.Add(1)
	} else {
		m.proto(proto).loginFailed.Add(1)
	}
}

// UpstreamAuthFailed implements front.Metrics.
func (m *Metrics) UpstreamAuthFailed(proto string) { m.proto(proto).upstreamAuthFailed.Add(1) }

// Relayed implements front.Metrics.
func (m *Metrics) Relayed(proto string, toUpstream, toClient int64) {
	c := m.proto(proto)
	c.toUpstream.Add(toUpstream)
	c.toClient.Add(toClient)
}

// Message implements front.Metrics.
func (m *Metrics) Message(accepted bool) {
	if accepted {
		m.submitted.Add(1)
	} else {
		m.rejected.Add(1)
	}
}

// Session implements front.Metrics. It counts open sessions only: an SMTP
// session opens at the local AUTH, before anything reached the upstream,
// so the last upstream login comes from UpstreamResult.
func (m *Metrics) Session(account string, delta int) {
	m.account(account).sessions.Add(int64(delta))
}

// TokenRefresh counts a refresh at the token endpoint.
func (m *Metrics) TokenRefresh(ok bool) {
	if ok {
		m.refreshOK.Add(1)
	} else {
		m.refreshFailed.Add(1)
	}
}

// SessionsOpen returns how many relayed sessions account has open now.
func (m *Metrics) SessionsOpen(account string) int64 {
	c := m.lookup(account)
	if c == nil {
		return 0
	}
	return c.sessions.Load()
}

// LastUpstreamLogin returns when account last logged in upstream; the zero
// time if it did not since the process started.
func (m *Metrics) LastUpstreamLogin(account string) time.Time {
	c := m.lookup(account)
	if c == nil {
		return time.Time{}
	}
	if ns := c.lastLogin.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// AccountGauge is what /metrics says about one delegated account.
type AccountGauge struct {
	Username    string
	NeedsSignIn bool
	// RenewalSeconds is the time left until the refresh token is
	// RenewalMargin from its end; negative when overdue. Meaningless when
	// HasRenewal is false (not signed in).
	RenewalSeconds float64
	HasRenewal     bool
}

// WritePrometheus writes every metric in the Prometheus text exposition
// format, version 0.0.4.
func (m *Metrics) WritePrometheus(w io.Writer, accounts []AccountGauge) error {
	b := bufio.NewWriter(w)

	m.mu.RLock()
	protos := make([]string, 0, len(m.protos))
	for p := range m.protos {
		protos = append(protos, p)
	}
	pc := make(map[string]*protoCounters, len(m.protos))
	for p, c := range m.protos {
		pc[p] = c
	}
	names := make([]string, 0, len(m.accounts))
	ac := make(map[string]*accountCounters, len(m.accounts))
	for a, c := range m.accounts {
		names = append(names, a)
		ac[a] = c
	}
	m.mu.RUnlock()
	sort.Strings(protos)
	sort.Strings(names)

	perProto := func(name, typ, help string, v func(*protoCounters) int64) {
		header(b, name, typ, help)
		for _, p := range protos {
			sample(b, name, []string{"proto", p}, float64(v(pc[p])))
		}
	}
	perProto("mailproxy_connections_open", "gauge", "Client connections open now.",
		func(c *protoCounters) int64 { return c.open.Load() })
	perProto("mailproxy_connections_total", "counter", "Client connections accepted.",
		func(c *protoCounters) int64 { return c.total.Load() })

	header(b, "mailproxy_logins_total", "counter", "Local login attempts by result.")
	for _, p := range protos {
		sample(b, "mailproxy_logins_total", []string{"proto", p, "result", "ok"}, float64(pc[p].loginOK.Load()))
		sample(b, "mailproxy_logins_total", []string{"proto", p, "result", "failed"}, float64(pc[p].loginFailed.Load()))
	}
	perProto("mailproxy_upstream_auth_failures_total", "counter", "Upstream servers refusing our token (after the retry).",
		func(c *protoCounters) int64 { return c.upstreamAuthFailed.Load() })

	header(b, "mailproxy_relayed_bytes_total", "counter", "Bytes relayed between clients and upstream servers.")
	for _, p := range protos {
		sample(b, "mailproxy_relayed_bytes_total", []string{"proto", p, "direction", "to_upstream"}, float64(pc[p].toUpstream.Load()))
		sample(b, "mailproxy_relayed_bytes_total", []string{"proto", p, "direction", "to_client"}, float64(pc[p].toClient.Load()))
	}

	header(b, "mailproxy_token_refreshes_total", "counter", "Token refreshes at the identity provider by result.")
	sample(b, "mailproxy_token_refreshes_total", []string{"result", "ok"}, float64(m.refreshOK.Load()))
	sample(b, "mailproxy_token_refreshes_total", []string{"result", "failed"}, float64(m.refreshFailed.Load()))

	header(b, "mailproxy_messages_total", "counter", "SMTP messages the upstream accepted (submitted) or refused (rejected).")
	sample(b, "mailproxy_messages_total", []string{"result", "submitted"}, float64(m.submitted.Load()))
	sample(b, "mailproxy_messages_total", []string{"result", "rejected"}, float64(m.rejected.Load()))

	header(b, "mailproxy_sessions_open", "gauge", "Relayed sessions open now per account.")
	for _, a := range names {
		sample(b, "mailproxy_sessions_open", []string{"account", a}, float64(ac[a].sessions.Load()))
	}
	header(b, "mailproxy_last_upstream_login_timestamp_seconds", "gauge", "Unix time of the account's last successful upstream login.")
	for _, a := range names {
		if ns := ac[a].lastLogin.Load(); ns != 0 {
			sample(b, "mailproxy_last_upstream_login_timestamp_seconds", []string{"account", a}, float64(ns)/1e9)
		}
	}

	header(b, "mailproxy_refresh_token_renewal_seconds", "gauge",
		fmt.Sprintf("Seconds until the refresh token is %d days from its %d-day end (negative: overdue); sign in again before it reaches 0 if the account is idle.",
			int(RenewalMargin/(24*time.Hour)), int(RefreshTokenLifetime/(24*time.Hour))))
	for _, a := range accounts {
		if a.HasRenewal {
			sample(b, "mailproxy_refresh_token_renewal_seconds", []string{"account", strings.ToLower(a.Username)}, math.Round(a.RenewalSeconds))
		}
	}
	header(b, "mailproxy_account_needs_signin", "gauge", "1 when the account needs a new sign-in by an admin.")
	for _, a := range accounts {
		v := 0.0
		if a.NeedsSignIn {
			v = 1
		}
		sample(b, "mailproxy_account_needs_signin", []string{"account", strings.ToLower(a.Username)}, v)
	}
	return b.Flush()
}

func header(b *bufio.Writer, name, typ, help string) {
	b.WriteString("# HELP ")
	b.WriteString(name)
	b.WriteByte(' ')
	b.WriteString(escapeHelp(help))
	b.WriteString("\n# TYPE ")
	b.WriteString(name)
	b.WriteByte(' ')
	b.WriteString(typ)
	b.WriteByte('\n')
}

// sample writes one line; labels are name, value pairs.
func sample(b *bufio.Writer, name string, labels []string, v float64) {
	b.WriteString(name)
	if len(labels) > 0 {
		b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(labels[i])
			b.WriteString(`="`)
			b.WriteString(escapeLabel(labels[i+1]))
			b.WriteByte('"')
		}
		b.WriteByte('}')
	}
	b.WriteByte(' ')
	b.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
	b.WriteByte('\n')
}

var (
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

func escapeLabel(s string) string { return labelEscaper.Replace(strings.ToValidUTF8(s, "\uFFFD")) }
func escapeHelp(s string) string  { return helpEscaper.Replace(s) }
