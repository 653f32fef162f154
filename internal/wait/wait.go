// Package wait owns the small timing helpers several packages need: a sleep
// that a context can cut short, and the growing delay between retries of a
// failed Accept.
package wait

import (
	"context"
	"time"
)

// Sleep waits for d or until ctx is done, whichever comes first, and
// returns ctx's error in the second case.
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Backoff is the delay before retrying an operation that keeps failing
// for a reason that may pass (an Accept out of file descriptors): it starts
// at Min and doubles up to Max. The zero value uses 5 ms and 1 s.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next returns the delay before the next retry.
func (b *Backoff) Next() time.Duration {
	lo, hi := b.Min, b.Max
	if lo <= 0 {
		lo = 5 * time.Millisecond
	}
	if hi <= 0 {
		hi = time.Second
	}
	b.cur = min(max(2*b.cur, lo), hi)
	return b.cur
}

// Reset starts the delays over after a success.
func (b *Backoff) Reset() { b.cur = 0 }
