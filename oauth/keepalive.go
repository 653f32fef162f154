package oauth

import (
	"context"
	"slices"
	"time"
)

// KeepAlive keeps rarely used accounts signed in: Entra ID refresh tokens
// expire after 90 days without use, so a scanner used twice a quarter
// would meet AADSTS700082. Every account the daemon can use without a
// client (its Source is open: a service-sealed account the daemon
// unlocked, or a password-sealed one a client unlocked since start) whose
// tokens were last obtained more than interval ago gets a refresh, which
// also rotates the refresh token. It checks every check until ctx ends.
// Accounts whose tokens are not open cannot be kept alive; KeepAliveGaps
// names them.
func (m *Manager) KeepAlive(ctx context.Context, interval, check time.Duration) {
	t := time.NewTicker(check)
	defer t.Stop()
	for {
		m.KeepAliveOnce(ctx, interval)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// KeepAliveOnce refreshes the open accounts whose tokens are older than
// interval and returns their usernames.
func (m *Manager) KeepAliveOnce(ctx context.Context, interval time.Duration) []string {
	now := m.now()
	var done []string
	for _, name := range m.accountNames() {
		a := m.account(name)
		if a == nil {
			continue
		}
		a.mu.Lock()
		src := a.source
		a.mu.Unlock()
		if src == nil {
			continue
		}
		ts := src.Tokens()
		if ts.RefreshToken == "" || now.Sub(ts.Obtained) < interval {
			continue
		}
		if _, err := src.Refresh(ctx, ts.AccessToken); err != nil {
			m.logger.Warn("keep-alive refresh failed", "account", name, "err", err)
			continue
		}
		m.logger.Info("keep-alive refresh", "account", name)
		done = append(done, name)
	}
	return done
}

// KeepAliveGaps returns the accounts whose tokens the daemon holds no open
// Source for, so KeepAlive cannot refresh them until a client logs in (or,
// for a service-sealed account, the daemon unlocks it).
func (m *Manager) KeepAliveGaps() []string {
	var out []string
	for _, name := range m.accountNames() {
		a := m.account(name)
		if a == nil {
			continue
		}
		a.mu.Lock()
		open := a.source != nil
		a.mu.Unlock()
		if !open {
			out = append(out, name)
		}
	}
	return out
}

func (m *Manager) accountNames() []string {
	m.mu.Lock()
	names := make([]string, 0, len(m.accounts))
	for n := range m.accounts {
		names = append(names, n)
	}
	m.mu.Unlock()
	slices.Sort(names)
	return names
}
