package front

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// maxRefusalKeys bounds the keys a Refusals remembers: keys come from the
// network (addresses, usernames), so an attacker chooses how many.
const maxRefusalKeys = 4096

// Refusals rate-limits the log lines of refused requests the way the
// connection limiter's line is: under a storm (a client retrying against a
// full mailbox cap, a locked-out printer), each kind of refusal for each
// key (mailbox, address and username...) is logged at most once per 10 s,
// with the number of refusals since its last line. The zero value is
// ready to use; it is safe for concurrent use.
type Refusals struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu sync.Mutex // protects m
	m  map[string]*refusalLog
}

// Log writes msg with args at level, unless a line of the same msg and key
// was written less than refusalLogEvery ago; then it only counts it. The
// next line carries refused_since_last_log.
func (r *Refusals) Log(l *slog.Logger, level slog.Level, key, msg string, args ...any) {
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	k := msg + "\x00" + key
	r.mu.Lock()
	if r.m == nil || len(r.m) >= maxRefusalKeys {
		r.m = make(map[string]*refusalLog)
	}
	rl := r.m[k]
	if rl == nil {
		rl = &refusalLog{}
		r.m[k] = rl
	}
	n, ok := rl.note(now())
	r.mu.Unlock()
	if !ok {
		return
	}
	if n > 1 {
		args = append(args, "refused_since_last_log", n)
	}
	l.Log(context.Background(), level, msg, args...)
}
