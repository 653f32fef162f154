package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"
)

// latencyWarmup round trips per mode are not counted.
const latencyWarmup = 10

// idleKick is how long an IDLE round waits for its notification before it
// delivers a second message (see benchLatency).
const idleKick = 3 * time.Second

// benchLatency: interactive traffic through the relay must not wait for
// more data. Two measurements, each direct and proxied in the same run:
//
//   - NOOP round trip on an authenticated, selected session, from the
//     command to its tagged OK;
//   - IDLE notification delay: a direct and a proxied session IDLE on the
//     same mailbox; the upstream delivers a message, and each client times
//     the "* N EXISTS" from the moment the delivery was asked for. Both
//     see the same event, so the difference is what the relay adds.
func (e *env) benchLatency(ctx context.Context, rep *report) error {
	p, err := e.mainProxy(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	sessions := map[mode]*imapClient{}
	defer func() {
		for _, c := range sessions {
			c.close()
		}
	}()
	for _, m := range []mode{direct, proxied} {
		var c *imapClient
		if m == direct {
			c, err = e.dialDirect(ctx, benchUser)
		} else {
			c, err = e.dialProxied(ctx, p, proxyUser)
		}
		if err != nil {
			return err
		}
		sessions[m] = c
		if _, err := c.run("SELECT INBOX"); err != nil {
			return fmt.Errorf("SELECT: %w", err)
		}
	}

	rtt, err := e.noopRoundTrips(sessions)
	if err != nil {
		return err
	}
	rep.add(latencyRow(fmt.Sprintf("IMAP NOOP round trip (N=%d each)", e.o.latencyN), rtt))

	delay := map[mode][]time.Duration{}
	n := max(e.o.latencyN/4, 10)
	missed := 0
	for i := range latencyWarmup/2 + n {
		got, dropped, err := e.idleRound(sessions)
		if err != nil {
			return err
		}
		missed += dropped
		if dropped == 0 && i >= latencyWarmup/2 {
			for _, m := range []mode{direct, proxied} {
				delay[m] = append(delay[m], got[m])
			}
		}
	}
	if missed > 0 {
		rep.note("IDLE notification: %d rounds dropped because no notification came within %s of the delivery; a second delivery ended them.", missed, idleKick)
	}
	rep.add(latencyRow(fmt.Sprintf("IMAP IDLE notification, delivery to * EXISTS (N=%d each)", n), delay))
	e.logf("latency: NOOP direct %s proxied %s; IDLE direct %s proxied %s",
		latencyCell(rtt[direct]), latencyCell(rtt[proxied]), latencyCell(delay[direct]), latencyCell(delay[proxied]))
	return nil
}

// noopRoundTrips times NOOP on each session, latencyWarmup + latencyN
// times, in alternating order, and returns the times after the warm-up.
func (e *env) noopRoundTrips(sessions map[mode]*imapClient) (map[mode][]time.Duration, error) {
	rtt := map[mode][]time.Duration{}
	for i := range latencyWarmup + e.o.latencyN {
		for _, m := range order(i) {
			t := time.Now()
			if _, err := sessions[m].run("NOOP"); err != nil {
				return nil, fmt.Errorf("NOOP %s: %w", m, err)
			}
			if i >= latencyWarmup {
				rtt[m] = append(rtt[m], time.Since(t))
			}
		}
	}
	return rtt, nil
}

// idleRound puts both sessions in IDLE, has the upstream deliver a message
// and returns how long each took to hear of it, and how many times no
// notification came within idleKick so that another message was
// delivered: the times of such a round are not to be counted.
func (e *env) idleRound(sessions map[mode]*imapClient) (map[mode]time.Duration, int, error) {
	for _, m := range []mode{direct, proxied} {
		if err := sessions[m].startIdle(); err != nil {
			return nil, 0, fmt.Errorf("IDLE %s: %w", m, err)
		}
	}
	type result struct {
		m   mode
		d   time.Duration
		err error
	}
	results := make(chan result, 2)
	t := time.Now()
	for _, m := range []mode{direct, proxied} {
		go func() {
			err := sessions[m].waitExists()
			results <- result{m, time.Since(t), err}
		}()
	}
	if _, err := e.up.call("append " + benchUser); err != nil {
		return nil, 0, err
	}
	got := map[mode]time.Duration{}
	kick := time.NewTimer(idleKick)
	defer kick.Stop()
	missed := 0
	for len(got) < 2 {
		select {
		case r := <-results:
			if r.err != nil {
				return nil, 0, fmt.Errorf("IDLE %s: wait for EXISTS: %w", r.m, r.err)
			}
			got[r.m] = r.d
		case <-kick.C:
			// No notification yet: on a loaded machine a delivery can
			// take this long, and a lost one must not hang the bench.
			// Deliver another, drop this round and wait again.
			kick.Reset(idleKick)
			missed++
			if _, err := e.up.call("append " + benchUser); err != nil {
				return nil, 0, err
			}
		}
	}
	for _, m := range []mode{direct, proxied} {
		if err := sessions[m].doneIdle(); err != nil {
			return nil, 0, fmt.Errorf("IDLE %s: DONE: %w", m, err)
		}
	}
	return got, missed, nil
}

// latencyRow reports what the relay adds at the median. There is no fixed
// target: issue 13 asks for no worse than before the coalescing relay, which
// docs/BENCHMARKS.md compares.
func latencyRow(name string, lat map[mode][]time.Duration) row {
	dm, pm := median(lat[direct]), median(lat[proxied])
	return row{
		workload: name,
		direct:   latencyCell(lat[direct]),
		proxied:  latencyCell(lat[proxied]),
		ratio:    fmt.Sprintf("%+.3f ms", float64(pm-dm)/float64(time.Millisecond)),
		target:   "(report; compare runs)",
		met:      "—",
	}
}

// startIdle sends IDLE and waits for the continuation.
func (c *imapClient) startIdle() error {
	c.idleTag = c.send("IDLE")
	for {
		line, err := c.readLine()
		if err != nil {
			return err
		}
		if strings.HasPrefix(line, "+") {
			return nil
		}
		if strings.HasPrefix(line, c.idleTag+" ") {
			return fmt.Errorf("IDLE refused: %s", line)
		}
	}
}

// waitExists reads untagged responses until an EXISTS.
func (c *imapClient) waitExists() error {
	for {
		line, err := c.readLine()
		if err != nil {
			return err
		}
		if strings.HasPrefix(line, "* ") && strings.HasSuffix(line, " EXISTS") {
			return nil
		}
	}
}

// doneIdle ends IDLE and waits for its tagged OK.
func (c *imapClient) doneIdle() error {
	if _, err := io.WriteString(c.conn, "DONE\r\n"); err != nil {
		return err
	}
	return c.wait(c.idleTag, nil)
}
