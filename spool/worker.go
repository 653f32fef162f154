package spool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// item is one queued message in memory: no body, only what scheduling
// needs.
type item struct {
	env       *Envelope
	remaining []string  // recipients neither delivered nor failed
	attempts  int       // attempts that ended in a retry
	next      time.Time // not before
	delivered int       // recipients so far
	failed    int
	seq       uint64 // arrival order, for ties
	done      bool   // recovery: the journal says it left the queue
	deleted   bool   // an admin deleted it during an attempt
}

func (it *item) result() string {
	switch {
	case it.failed == 0:
		return ResultDelivered
	case it.delivered == 0:
		return ResultBounced
	}
	return ResultPartial
}

// sentMark is one submission in the daily recipient window.
type sentMark struct {
	at    time.Time
	rcpts int
}

// worker delivers one mailbox's queue, one message at a time, over one
// upstream session.
type worker struct {
	s       *Spool
	mailbox string
	wake    chan struct{} // buffered 1: something changed

	mu        sync.Mutex // protects items, current, paused, nextSend, sent, counters
	items     map[string]*item
	current   *item // being attempted
	paused    *Pause
	nextSend  time.Time  // pacing and throttling: no submission before
	sent      []sentMark // the last 24 hours
	delivered uint64
	deferred  uint64
	bounced   uint64

	// Owned by the worker goroutine.
	sess        Submitter
	sessAccount string
	sessUsed    bool // a transaction ran: RSET before the next
}

func (w *worker) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *worker) add(it *item) {
	it.seq = w.s.seq.Add(1)
	w.mu.Lock()
	w.items[it.env.ID] = it
	w.mu.Unlock()
	w.poke()
}

func (w *worker) status() MailboxStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := MailboxStatus{Mailbox: w.mailbox, Depth: len(w.items),
		Delivered: w.delivered, Deferred: w.deferred, Bounced: w.bounced}
	for _, it := range w.items {
		if st.Oldest.IsZero() || it.env.Received.Before(st.Oldest) {
			st.Oldest = it.env.Received
		}
	}
	if w.paused != nil {
		p := *w.paused
		st.Paused = &p
	}
	return st
}

// pick returns the message to attempt now, or how long to wait (wait < 0:
// until something changes).
func (w *worker) pick(now time.Time) (*item, time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.paused != nil || len(w.items) == 0 {
		return nil, -1
	}
	var best *item
	for _, it := range w.items {
		if best == nil || it.next.Before(best.next) ||
			it.next.Equal(best.next) && it.seq < best.seq {
			best = it
		}
	}
	expired := !now.Before(best.env.Received.Add(w.s.o.MaxAge))
	if best.next.After(now) && !expired {
		return nil, best.next.Sub(now)
	}
	if expired {
		// Bouncing needs no upstream: no pacing.
		w.current = best
		return best, 0
	}
	if w.nextSend.After(now) {
		return nil, w.nextSend.Sub(now)
	}
	// Daily recipients: the sum over the last 24 hours, plus this one,
	// stays within the cap (a single message over the cap goes alone).
	cutoff := now.Add(-24 * time.Hour)
	i := 0
	for i < len(w.sent) && !w.sent[i].at.After(cutoff) {
		i++
	}
	w.sent = w.sent[i:]
	sum := 0
	for _, m := range w.sent {
		sum += m.rcpts
	}
	need := len(best.remaining)
	if limit := w.s.o.DailyRecipients; sum > 0 && sum+need > limit {
		for _, m := range w.sent {
			sum -= m.rcpts
			if sum+need <= limit || sum == 0 {
				return nil, m.at.Add(24 * time.Hour).Sub(now)
			}
		}
	}
	w.current = best
	return best, 0
}

func (w *worker) run(ctx context.Context) {
	defer w.closeSession(true)
	clock := w.s.o.Clock
	for ctx.Err() == nil {
		it, wait := w.pick(clock.Now())
		if it != nil {
			w.attempt(ctx, it)
			continue
		}
		if wait < 0 || wait > idleQuit {
			w.closeSession(true)
		}
		if wait < 0 {
			select {
			case <-ctx.Done():
			case <-w.wake:
			}
			continue
		}
		t := clock.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-w.wake:
		case <-t.C():
		}
		t.Stop()
	}
}

func (w *worker) closeSession(quit bool) {
	if w.sess == nil {
		return
	}
	if quit {
		w.sess.Quit()
	}
	w.sess, w.sessAccount, w.sessUsed = nil, "", false
}

// drop ends a session after a failure: closed at once when the Submitter
// can be (io.Closer), else with Quit, its error ignored.
func (w *worker) drop() {
	if c, ok := w.sess.(io.Closer); ok {
		c.Close()
		w.closeSession(false)
		return
	}
	w.closeSession(true)
}

// session returns an open session for account, reusing the current one
// (RSET first when a transaction ran on it).
func (w *worker) session(ctx context.Context, account string) (Submitter, error) {
	if w.sess != nil && w.sessAccount != account {
		w.closeSession(true)
	}
	if w.sess != nil && w.sessUsed {
		if err := w.sess.Reset(); err != nil {
			w.drop()
		} else {
			w.sessUsed = false
		}
	}
	if w.sess != nil {
		return w.sess, nil
	}
	sub, err := w.s.o.Open(ctx, account)
	if err != nil {
		return nil, err
	}
	w.sess, w.sessAccount = sub, account
	return sub, nil
}

// outcome is what one attempt did to each recipient.
type outcome struct {
	delivered, failed, deferred []string
	reply                       string            // the last reply (verbatim) that decided recipients
	failReply                   map[string]string // per failed recipient, for the DSN
	failStatus                  map[string]string
	cls                         class // of the deferral: temp, throttle or mailbox
	delay                       time.Duration
	submitted                   bool // MAIL was sent: the attempt counts for pacing
}

func (o *outcome) fail(rcpts []string, err error) {
	if o.failReply == nil {
		o.failReply, o.failStatus = map[string]string{}, map[string]string{}
	}
	for _, r := range rcpts {
		o.failed = append(o.failed, r)
		o.failReply[r] = replyText(err)
		o.failStatus[r] = statusOf(err)
	}
	o.reply = replyText(err)
}

func (o *outcome) defer_(rcpts []string, err error, c class, d time.Duration) {
	o.deferred = append(o.deferred, rcpts...)
	o.reply = replyText(err)
	if c > o.cls {
		o.cls = c
	}
	o.delay = max(o.delay, d)
}

// attempt tries one message once and records what happened.
func (w *worker) attempt(ctx context.Context, it *item) {
	defer func() {
		w.mu.Lock()
		w.current = nil
		w.mu.Unlock()
	}()
	now := w.s.o.Clock.Now()
	env := it.env
	var o outcome
	if !now.Before(env.Received.Add(w.s.o.MaxAge)) {
		err := &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 4, 7},
			Message: fmt.Sprintf("not delivered within %s (spool.max_age)", w.s.o.MaxAge)}
		o.fail(it.remaining, err)
		w.record(it, now, &o)
		return
	}
	w.send(ctx, it, &o)
	w.mu.Lock()
	if o.submitted {
		w.nextSend = maxTime(w.nextSend, now.Add(time.Minute/time.Duration(w.s.o.Rate)))
	}
	if len(o.delivered) > 0 {
		w.sent = append(w.sent, sentMark{at: now, rcpts: len(o.delivered)})
	}
	w.mu.Unlock()
	w.record(it, now, &o)
}

// send runs the SMTP transaction.
func (w *worker) send(ctx context.Context, it *item, o *outcome) {
	env := it.env
	rcpts := it.remaining
	sub, err := w.session(ctx, env.Account)
	if err != nil {
		c, d := classify(err)
		if c == classMessage {
			c = classTemp // a refused login is about the account, not the message
		}
		o.defer_(rcpts, err, c, d)
		return
	}
	reused := w.sessUsed
	w.sessUsed = true
	o.submitted = true
	mailOpts := &smtp.MailOptions{Body: smtp.BodyType(env.Body), UTF8: env.UTF8}
	err = sub.Mail(env.From, mailOpts)
	if err != nil && reused && !isReply(err) {
		// The idle session went stale: one fresh one.
		w.drop()
		if sub, err = w.session(ctx, env.Account); err == nil {
			w.sessUsed = true
			err = sub.Mail(env.From, mailOpts)
		}
	}
	if err != nil {
		w.stepFailed(o, rcpts, err)
		return
	}
	var accepted []string
	for _, r := range rcpts {
		err := sub.Rcpt(r, &smtp.RcptOptions{})
		if err == nil {
			accepted = append(accepted, r)
			continue
		}
		c, d := classify(err)
		switch c {
		case classMessage:
			o.fail([]string{r}, err)
		case classMailbox:
			o.defer_(without(rcpts, o.failed, o.deferred), err, c, d)
			w.drop()
			return
		default:
			if !isReply(err) {
				// The transaction is gone: everyone not failed waits.
				o.defer_(without(rcpts, o.failed, o.deferred), err, c, d)
				w.drop()
				return
			}
			o.defer_([]string{r}, err, c, d)
		}
	}
	if len(accepted) == 0 {
		return // the next transaction starts with RSET
	}
	rc, err := w.s.store.Open(env.ID)
	if err != nil {
		o.defer_(accepted, err, classTemp, 0)
		return
	}
	reply, err := sub.Data(rc)
	rc.Close()
	if err != nil {
		w.stepFailed(o, accepted, err)
		return
	}
	o.delivered = accepted
	o.reply = reply
}

// stepFailed sorts a failure of MAIL or DATA, which applies to all of rcpts.
func (w *worker) stepFailed(o *outcome, rcpts []string, err error) {
	c, d := classify(err)
	if c == classMessage {
		o.fail(rcpts, err)
		return
	}
	o.defer_(rcpts, err, c, d)
	if !isReply(err) || c == classMailbox {
		w.drop()
	}
}

func isReply(err error) bool {
	var se *smtp.SMTPError
	return errors.As(err, &se)
}

// record writes the attempt to the journal and updates the queue: DSNs
// for failed recipients, a retry time for deferred ones, the pause for a
// mailbox-level refusal, and the end of the message when nobody is left.
func (w *worker) record(it *item, now time.Time, o *outcome) {
	s := w.s
	env := it.env
	if len(o.delivered) > 0 && s.o.afterUpstream != nil {
		s.o.afterUpstream(env.ID)
	}
	ev := Event{Time: now, ID: env.ID, Kind: EvAttempt, Delivered: o.delivered,
		Failed: o.failed, Deferred: o.deferred, Reply: o.reply}
	var next time.Time
	if len(o.deferred) > 0 {
		back := s.o.Retry << min(it.attempts, 20)
		if back > s.o.MaxRetry || back <= 0 {
			back = s.o.MaxRetry
		}
		if o.cls == classThrottle {
			back = max(back, o.delay)
		}
		next = now.Add(back)
		// Expiry is on time even when the backoff is long.
		next = minTime(next, env.Received.Add(s.o.MaxAge))
		ev.Next = next
	}
	evs := []Event{ev}
	if len(o.failed) > 0 {
		if dsnEv, ok := w.bounce(it, now, o); ok {
			evs = append(evs, dsnEv)
		}
	}

	w.mu.Lock()
	it.remaining = without(it.remaining, o.delivered, o.failed)
	it.delivered += len(o.delivered)
	it.failed += len(o.failed)
	if len(o.delivered) > 0 && len(it.remaining) == 0 {
		w.delivered++
	}
	if len(o.failed) > 0 {
		w.bounced++
	}
	if len(o.deferred) > 0 {
		w.deferred++
		it.attempts++
		it.next = next
		if o.cls == classThrottle {
			w.nextSend = maxTime(w.nextSend, now.Add(max(o.delay, s.o.Retry)))
		}
	}
	finished := len(it.remaining) == 0 || it.deleted
	if finished {
		delete(w.items, env.ID)
	}
	w.mu.Unlock()

	result := it.result()
	if it.deleted && len(it.remaining) > 0 {
		result = ResultDeleted
	}
	if env.IsDSN && len(o.failed) > 0 {
		w.redirectDSN(it) // before finish removes its file
	}
	var err error
	if finished {
		err = s.finish(it, result, evs...)
	} else {
		// Sync: a delivery to some recipients must not be repeated.
		err = s.store.Append(len(o.delivered) > 0, evs...)
	}
	if err != nil {
		s.log.Error("spool: journal write failed", "id", env.ID, "err", err)
	}
	s.log.Info("spool: attempt", "id", env.ID, "mailbox", env.Mailbox, "device", env.Device,
		"delivered", len(o.delivered), "failed", len(o.failed), "deferred", len(o.deferred),
		"reply", o.reply)

	if o.cls == classMailbox && len(o.deferred) > 0 {
		w.pause(o.reply)
	}
	if s.o.afterRecord != nil {
		s.o.afterRecord(env.ID)
	}
}

func (w *worker) pause(reason string) error {
	p := &Pause{Mailbox: w.mailbox, Since: w.s.o.Clock.Now(), Reason: reason}
	if err := w.s.store.SetPaused(w.mailbox, p); err != nil {
		// Paused in memory all the same: sending on is worse.
		w.s.log.Error("spool: cannot record the pause", "mailbox", w.mailbox, "err", err)
	}
	w.mu.Lock()
	w.paused = p
	w.mu.Unlock()
	w.s.log.Error("spool: mailbox paused: the upstream refused it; nothing more is sent until an admin resumes it (mailproxy queue resume) or a check of the account succeeds",
		"mailbox", w.mailbox, "reply", reason)
	if w.s.o.OnPause != nil {
		w.s.o.OnPause(*p)
	}
	w.poke()
	return nil
}

func (w *worker) resume() error {
	if err := w.s.store.SetPaused(w.mailbox, nil); err != nil {
		return err
	}
	now := w.s.o.Clock.Now()
	w.mu.Lock()
	w.paused = nil
	for _, it := range w.items {
		it.next = now
	}
	w.mu.Unlock()
	w.s.log.Info("spool: mailbox resumed", "mailbox", w.mailbox)
	w.poke()
	return nil
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
