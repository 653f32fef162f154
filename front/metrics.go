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

// UpstreamObserver is what a Metrics may also implement to learn how each
// upstream login really went: err is nil when the upstream server accepted
// the token, else why it could not be reached or refused. Token errors
// from the identity provider are not upstream results.
type UpstreamObserver interface {
	UpstreamResult(account, proto string, err error)
}

// ObserveUpstream tells m about an upstream login when m is an
// UpstreamObserver.
func ObserveUpstream(m Metrics, account, proto string, err error) {
	if o, ok := m.(UpstreamObserver); ok {
		o.UpstreamResult(account, proto, err)
	}
}
