package front

// MetricsOrNop returns m, or a Metrics that discards everything when m is
// nil, so that the fronts can call it without checking.
func MetricsOrNop(m Metrics) Metrics {
	if m == nil {
		return nopMetrics{}
	}
	return m
}

type nopMetrics struct{}

func (nopMetrics) ConnOpened(string)            {}
func (nopMetrics) ConnClosed(string)            {}
func (nopMetrics) Login(string, bool)           {}
func (nopMetrics) UpstreamAuthFailed(string)    {}
func (nopMetrics) Relayed(string, int64, int64) {}
func (nopMetrics) Message(bool)                 {}
func (nopMetrics) Session(string, int)          {}

// Metrics receives counts from the fronts for /metrics. Every method must be
// cheap and safe for concurrent use; fronts call them through a nil-safe
// wrapper so a nil Metrics costs nothing.
type Metrics interface {
	ConnOpened(proto string)
	ConnClosed(proto string)
	// Login counts a local login attempt; ok is false for a refused one.
	Login(proto string, ok bool)
	// UpstreamAuthFailed counts an upstream refusing our token (after the
	// retry).
	UpstreamAuthFailed(proto string)
	// Relayed adds bytes moved between client and upstream.
	Relayed(proto string, toUpstream, toClient int64)
	// Message counts an SMTP message the upstream accepted or rejected.
	Message(accepted bool)
	// Session tracks relayed sessions open per account (delta +1 or -1).
	Session(account string, delta int)
}
