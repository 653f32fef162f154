package admin

import "sort"

// ProtoStats is what the index page shows per protocol (imap, smtp, pop3):
// connections open now and since start, local logins accepted and refused,
// and upstream refusals of our tokens.
type ProtoStats struct {
	Name                      string
	Open, Total               int64
	LoginsOK, LoginsFailed    int64
	UpstreamAuthFailed        int64
	BytesToUpstream, ToClient int64
}

// Protocols returns the counters of every protocol seen, or known from the
// start, sorted by name.
func (m *Metrics) Protocols() []ProtoStats {
	m.mu.RLock()
	out := make([]ProtoStats, 0, len(m.protos))
	for name, c := range m.protos {
		out = append(out, ProtoStats{
			Name: name, Open: c.open.Load(), Total: c.total.Load(),
			LoginsOK: c.loginOK.Load(), LoginsFailed: c.loginFailed.Load(),
			UpstreamAuthFailed: c.upstreamAuthFailed.Load(),
			BytesToUpstream:    c.toUpstream.Load(), ToClient: c.toClient.Load(),
		})
	}
	m.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
