package daemon

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"time"

	"mailproxy/admin"
)

// HealthFile is where serve keeps what it knows of each account's
// upstreams (the last real upstream login and error per protocol, the
// recent errors), in state_dir, for `mailproxy status` (another process)
// to show.
const HealthFile = "health.json"

// How often the health state is saved: changes are looked for every
// healthCheckEvery (not written once per login), and the file is rewritten
// at least every HealthHeartbeat while serve runs, so that its age tells
// whether serve still runs.
const (
	healthCheckEvery = 10 * time.Second
	HealthHeartbeat  = 5 * time.Minute
)

// HealthState is the content of state_dir/health.json.
type HealthState struct {
	PID      int             `json:"pid"`
	Started  time.Time       `json:"started"`
	Written  time.Time       `json:"written"`
	Stopped  time.Time       `json:"stopped,omitzero"` // set by the last write, at shutdown
	Accounts []AccountHealth `json:"accounts"`
}

// AccountHealth is one account's upstream health.
type AccountHealth struct {
	Username  string                `json:"username"`
	Upstreams []admin.UpstreamState `json:"upstreams,omitempty"` // per protocol, sorted
	Recent    []admin.UpstreamError `json:"recent_errors,omitempty"`
}

// healthSaver remembers what was last saved.
type healthSaver struct {
	mu      sync.Mutex // serializes writes of state_dir/health.json
	started time.Time  // zero until Start: nothing is saved before
	gen     int64      // the metrics' HealthGeneration last saved
	written time.Time
}

// saveHealth writes the health state to state_dir/health.json (atomic,
// 0600); stopped marks the last write, at shutdown. The error texts hold
// no credentials (admin.Metrics redacts them).
func (d *Daemon) saveHealth(stopped bool) {
	h := &d.health
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.started.IsZero() {
		return
	}
	now := time.Now()
	gen := d.metrics.HealthGeneration()
	st := HealthState{PID: os.Getpid(), Started: h.started, Written: now, Accounts: []AccountHealth{}}
	if stopped {
		st.Stopped = now
	}
	for _, a := range d.adminAccounts() {
		st.Accounts = append(st.Accounts, AccountHealth{
			Username:  a.Username,
			Upstreams: d.metrics.Upstreams(a.Username),
			Recent:    d.metrics.RecentUpstreamErrors(a.Username),
		})
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return
	}
	if err := writeFileAtomic(filepath.Join(d.Config().StateDir, HealthFile), append(data, '\n'), 0o600); err != nil {
		d.logger.Warn("could not save the upstream health for `mailproxy status`", "err", err)
		return
	}
	h.gen, h.written = gen, now
}

// startHealth saves the first health state, with no upstream result yet:
// from now on status knows that serve runs.
func (d *Daemon) startHealth() {
	d.health.mu.Lock()
	d.health.started = time.Now()
	d.health.mu.Unlock()
	d.saveHealth(false)
}

// healthLoop saves the health state when an upstream result came in since
// the last save, at most once per healthCheckEvery, and at least once per
// HealthHeartbeat.
func (d *Daemon) healthLoop() {
	t := time.NewTicker(healthCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			d.health.mu.Lock()
			due := d.health.gen != d.metrics.HealthGeneration() || time.Since(d.health.written) >= HealthHeartbeat
			d.health.mu.Unlock()
			if due {
				d.saveHealth(false)
			}
		case <-d.stop:
			return
		}
	}
}

// ReadHealth returns the health state serve last saved in stateDir; nil
// when no serve saved one there.
func ReadHealth(stateDir string) (*HealthState, error) {
	data, err := os.ReadFile(filepath.Join(stateDir, HealthFile))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st HealthState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, err
	}
	return &st, nil
}
