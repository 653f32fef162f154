package testutil

import (
	"context"
	"sync"
	"time"
)

// Clock is the one test clock. NewClock makes one frozen at a fixed
// instant; NewWallClock one that follows the wall clock. Either way Advance
// (or Set) moves it, and Sleep advances it instead of waiting and records
// the sleep. It is safe for concurrent use.
type Clock struct {
	mu    sync.Mutex // protects base, off, slept
	base  time.Time  // the frozen instant; zero: follow time.Now
	off   time.Duration
	slept []time.Duration
}

// NewClock returns a clock frozen at 2025-06-01 09:00 UTC.
func NewClock() *Clock { return &Clock{base: time.Date(2025, 6, 1, 9, 0, 0, 0, time.UTC)} }

// NewWallClock returns a clock that is time.Now moved by what the test
// sets.
func NewWallClock() *Clock { return &Clock{} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.base.IsZero() {
		return time.Now().Add(c.off)
	}
	return c.base.Add(c.off)
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.off += d
}

// Set puts the clock d away from where it started.
func (c *Clock) Set(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.off = d
}

// Sleep advances the clock by d at once and returns ctx's error.
func (c *Clock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.slept = append(c.slept, d)
	c.off += d
	return ctx.Err()
}

// TakeSlept returns the sleeps since the last call.
func (c *Clock) TakeSlept() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.slept
	c.slept = nil
	return s
}
