package proxy

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
