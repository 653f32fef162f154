package main

// The idle workload: many authenticated IMAP sessions held open through
// one proxy, and what each costs it in memory.

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

const (
	idleWorkers = 32      // open idle sessions in parallel
	idleReadBuf = 4 << 10 // idle clients read little
	// idleFDReserve is what the proxy needs besides two descriptors per
	// session: stdio, listeners, epoll, the log, the IdP connection.
	idleFDReserve = 32
)

// benchIdle: n idle authenticated sessions through a fresh proxy, each
// with its own upstream TLS connection; RSS per session above the proxy's
// RSS after its warm-up login.
func (e *env) benchIdle(ctx context.Context, rep *report) error {
	for _, n := range e.o.idle {
		if err := e.idleRun(ctx, rep, n); err != nil {
			return fmt.Errorf("%d idle sessions: %w", n, err)
		}
	}
	return nil
}

// idleResult is what one idle run measured.
type idleResult struct {
	asked, n     int // sessions asked for, and opened at most (the fd limit)
	alive        int64
	failed       int64         // sessions that failed to open
	opened       time.Duration // to open them all
	base         int64         // proxy RSS before
	raw, settled int64         // proxy RSS with the sessions, before and after GC
	rawStats, st proxyStats    // before and after GC
	firstErr     error
}

func (e *env) idleRun(ctx context.Context, rep *report, asked int) error {
	p, err := e.startProxy(fmt.Sprintf("idle%d", asked), false)
	if err != nil {
		return err
	}
	defer p.stop()
	r := idleResult{asked: asked, n: e.idleFit(rep, p, asked)}
	if err := e.warm(ctx, p, proxyUser); err != nil {
		return err
	}
	if err := p.settle(); err != nil {
		return err
	}
	if r.base, err = p.rss(); err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	var first firstError
	start := time.Now()
	conns, failed := e.openIdle(ctx, p, r.n, &first)
	r.failed = failed
	r.opened = time.Since(start)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.close()
			}
		}
	}()
	if r.raw, err = p.rss(); err != nil {
		return err
	}
	r.rawStats, _ = p.stats()
	if err := p.settle(); err != nil {
		return err
	}
	if r.settled, r.st, err = e.measure(p); err != nil {
		return err
	}
	r.alive = stillAlive(conns, &first)
	r.firstErr = first.err
	if r.alive == 0 {
		return fmt.Errorf("no session opened: %w", r.firstErr)
	}
	e.reportIdle(rep, r)
	return nil
}

// idleFit returns how many of asked sessions the proxy's descriptor limit
// allows. Each relayed session holds two descriptors in the proxy (client
// and upstream). Where the hard limit cannot be raised, ask only for what
// fits, and say so.
func (e *env) idleFit(rep *report, p *proxyProc, asked int) int {
	n := asked
	if fit := (int(p.hello.NoFile) - idleFDReserve) / 2; n > fit {
		n = fit
		rep.note("%d idle sessions asked for, %d run: the proxy's RLIMIT_NOFILE is %d and cannot be raised on this machine "+
			"(setrlimit needs CAP_SYS_RESOURCE over the hard limit), and each relayed session holds 2 descriptors.",
			asked, n, p.hello.NoFile)
		e.logf("idle: RLIMIT_NOFILE %d allows %d sessions, not %d", p.hello.NoFile, n, asked)
	}
	return n
}

// openIdle opens n sessions through p, idleWorkers at a time, each with a
// NOOP through the relay so that both directions run, and clears their
// deadlines. A session that failed is nil in the result and counted in
// failed.
func (e *env) openIdle(ctx context.Context, p *proxyProc, n int, first *firstError) (conns []*imapClient, failed int64) {
	conns = make([]*imapClient, n)
	var nfailed atomic.Int64
	inParallel(ctx, n, idleWorkers, func(i int) {
		c, err := e.dialProxiedBuf(ctx, p, proxyUser, idleReadBuf)
		if err == nil {
			if _, err = c.run("NOOP"); err != nil {
				c.close()
			}
		}
		if err != nil {
			nfailed.Add(1)
			first.set(err)
			return
		}
		c.conn.SetDeadline(time.Time{})
		conns[i] = c
	})
	return conns, nfailed.Load()
}

// stillAlive runs a NOOP on every open session and returns how many
// answered.
func stillAlive(conns []*imapClient, first *firstError) int64 {
	var alive atomic.Int64
	// Every session is tried, whatever is left of the step's time.
	inParallel(context.Background(), len(conns), idleWorkers, func(i int) {
		c := conns[i]
		if c == nil {
			return
		}
		c.setDeadline(time.Minute)
		if _, err := c.run("NOOP"); err != nil {
			first.set(fmt.Errorf("NOOP on an idle session: %w", err))
			return
		}
		alive.Add(1)
	})
	return alive.Load()
}

func (e *env) reportIdle(rep *report, r idleResult) {
	perRaw := (r.raw - r.base) / r.alive
	perSettled := (r.settled - r.base) / r.alive
	rep.add(row{
		workload: fmt.Sprintf("proxy RSS per idle IMAP session, %d sessions", r.n),
		direct:   "—",
		proxied:  fmt.Sprintf("%s (after GC %s)", kib(perRaw), kib(perSettled)),
		ratio:    "—",
		target:   "≤ 64 KiB",
		met:      yesNo(perRaw <= 64<<10),
	})
	held := yesNo(r.alive == int64(r.n) && r.failed == 0)
	if r.n < r.asked && held == "yes" {
		held = fmt.Sprintf("no: fd limit allows %d", r.n)
	}
	rep.add(row{
		workload: fmt.Sprintf("%d idle sessions held", r.asked),
		direct:   "—",
		proxied:  fmt.Sprintf("%d/%d alive, %d failed to open", r.alive, r.n, r.failed),
		ratio:    "—",
		target:   "all, no error",
		met:      held,
	})
	rep.note("%d idle sessions: opened in %s; proxy RSS %.1f MiB before, %.1f MiB with them (%.1f MiB after GC). "+
		"Go heap in use %.1f MiB (%.1f after GC), stacks %.1f MiB, %d goroutines, %d heap objects.",
		r.n, r.opened.Round(time.Millisecond), float64(r.base)/(1<<20), float64(r.raw)/(1<<20), float64(r.settled)/(1<<20),
		float64(r.rawStats.HeapInuse)/(1<<20), float64(r.st.HeapInuse)/(1<<20), float64(r.st.StackInuse)/(1<<20),
		r.st.Goroutines, r.st.HeapObjects)
	if r.firstErr != nil {
		rep.note("%d idle sessions: first error: %v", r.n, r.firstErr)
	}
	e.logf("idle %d: %s per session (after GC %s), %d alive", r.n, kib(perRaw), kib(perSettled), r.alive)
}

// inParallel calls f(i) for every i in [0, n) from workers goroutines and
// waits for them; a worker takes no new i once ctx is done.
func inParallel(ctx context.Context, n, workers int, f func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				f(i)
			}
		}()
	}
	wg.Wait()
}

// firstError keeps the first error set by any of several goroutines.
type firstError struct {
	once sync.Once
	err  error
}

func (f *firstError) set(err error) { f.once.Do(func() { f.err = err }) }
