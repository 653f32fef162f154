package spool

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func TestDeliverReusesOneSession(t *testing.T) {
	e := newEnv(t, nil)
	var ids []string
	for i := range 5 {
		ids = append(ids, e.enqueue("scanner@contoso.com", []string{"bob@example.com"}, testMessage(fmt.Sprint("scan ", i))))
	}
	e.sp.Start()
	e.run(e.delivered(5))
	opens, resets, _, got := e.up.snapshot()
	if opens != 1 {
		t.Errorf("sessions opened = %d, want 1 (one session for the burst)", opens)
	}
	if resets != 4 {
		t.Errorf("RSETs = %d, want 4 (between 5 messages)", resets)
	}
	for i, d := range got {
		want := testMessage(fmt.Sprint("scan ", i))
		if string(d.body) != want {
			t.Errorf("message %d body = %q, want %q", i, d.body, want)
		}
	}
	e.run(func() bool { return e.sp.Status()[0].Depth == 0 })
	for _, id := range ids {
		r := e.record(id)
		if r.Result != ResultDelivered || len(r.Attempts) != 1 || !strings.Contains(r.Attempts[0].Reply, "OK <queued@fake>") {
			t.Errorf("record %s = %+v, want delivered once with the upstream's reply", id, r)
		}
	}
	ents, _ := e.store.Queued()
	if len(ents) != 0 {
		t.Errorf("queue after delivery holds %d files, want 0", len(ents))
	}
}

// Pacing is checked with the fake clock: 30 per minute is one every 2 s.
func TestPacing(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Rate = 30 })
	for i := range 10 {
		e.enqueue("scanner@contoso.com", []string{"bob@example.com"}, testMessage(fmt.Sprint("p", i)))
	}
	start := e.clock.Now()
	e.sp.Start()
	e.run(e.delivered(10))
	_, _, _, got := e.up.snapshot()
	for i, d := range got {
		if want := start.Add(time.Duration(i) * 2 * time.Second); !d.at.Equal(want) {
			t.Errorf("message %d sent at +%s, want +%s", i, d.at.Sub(start), want.Sub(start))
		}
	}
}

func TestDailyRecipients(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.DailyRecipients = 3; o.Rate = 600 })
	for i := range 3 {
		e.enqueue("scanner@contoso.com", []string{"a@example.com", "b@example.com"}, testMessage(fmt.Sprint("d", i)))
	}
	start := e.clock.Now()
	e.sp.Start()
	e.run(e.delivered(3))
	_, _, _, got := e.up.snapshot()
	// 2 recipients fit, 2+2 do not: the second waits a day after the first.
	if d := got[1].at.Sub(start); d != 24*time.Hour {
		t.Errorf("second message sent at +%s, want +24h (daily cap)", d)
	}
	if d := got[2].at.Sub(start); d != 48*time.Hour {
		t.Errorf("third message sent at +%s, want +48h", d)
	}
}

func TestRetryBackoffOnTemporaryErrors(t *testing.T) {
	e := newEnv(t, nil)
	e.up.fail("open", errConnReset, errConnReset) // upstream down twice
	e.up.fail("data", smtpErr(451, smtp.EnhancedCode{4, 3, 0}, "Temporary server error"))
	id := e.enqueue("scanner@contoso.com", []string{"bob@example.com"}, testMessage("retry"))
	start := e.clock.Now()
	e.sp.Start()
	e.run(e.delivered(1))
	_, _, _, got := e.up.snapshot()
	// Attempts at 0, +1m, +3m (1m then 2m), delivered at +7m (then 4m).
	if d := got[0].at.Sub(start); d != 7*time.Minute {
		t.Errorf("delivered at +%s, want +7m (backoff 1m, 2m, 4m)", d)
	}
	e.run(func() bool { return e.record(id).Result != "" })
	r := e.record(id)
	if len(r.Attempts) != 4 || !strings.Contains(r.Attempts[2].Reply, "451 4.3.0 Temporary server error") {
		t.Errorf("attempts = %+v, want 4 with the 451 verbatim", r.Attempts)
	}
}

func TestThrottleHonoursSuggestedBackoff(t *testing.T) {
	e := newEnv(t, nil)
	e.up.fail("mail", smtpErr(432, smtp.EnhancedCode{4, 3, 2},
		"STOREDRV.ClientSubmit; Request is throttled. Suggested Backoff Time: 300000 milliseconds"))
	e.enqueue("scanner@contoso.com", []string{"bob@example.com"}, testMessage("t1"))
	start := e.clock.Now()
	e.sp.Start()
	e.run(e.delivered(1))
	_, _, _, got := e.up.snapshot()
	if d := got[0].at.Sub(start); d != 5*time.Minute {
		t.Errorf("delivered at +%s, want +5m (the suggested backoff, not the 1m retry)", d)
	}
}

func TestExpiredMessageBounces(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxAge = 10 * time.Minute })
	for range 100 {
		e.up.fail("data", smtpErr(421, smtp.EnhancedCode{4, 4, 2}, "try later"))
	}
	id := e.enqueue("bob@contoso.com", []string{"carol@example.com"}, testMessage("old"))
	start := e.clock.Now()
	e.sp.Start()
	e.run(func() bool { return e.record(id).Result == ResultBounced })
	r := e.record(id)
	if d := r.Done.Sub(start); d != 10*time.Minute {
		t.Errorf("bounced at +%s, want +10m (max_age)", d)
	}
	if len(r.DSNs) != 1 || r.DSNs[0].To != testMailbox {
		t.Errorf("DSNs = %+v, want one to the mailbox (the sender was rewritten)", r.DSNs)
	}
}

func TestRecipientFailureSendsDSNAndNoRetry(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Rate = 600 })
	e.up.fail("rcpt:nobody@contoso.com", smtpErr(550, smtp.EnhancedCode{5, 1, 10},
		"RESOLVER.ADR.RecipNotFound; not found"))
	// The device may send as the mailbox, so the DSN goes to its sender.
	id := e.enqueue(testMailbox, []string{"nobody@contoso.com", "bob@example.com"}, testMessage("bad rcpt"))
	e.sp.Start()
	e.run(e.delivered(2)) // the message to bob, then the DSN
	_, _, _, got := e.up.snapshot()
	if !slices.Equal(got[0].to, []string{"bob@example.com"}) {
		t.Fatalf("first delivery to %v, want bob only", got[0].to)
	}
	dsn := got[1]
	if !slices.Equal(dsn.to, []string{testMailbox}) || dsn.from != testMailbox {
		t.Errorf("DSN envelope %s -> %v, want %s -> [%s]", dsn.from, dsn.to, testMailbox, testMailbox)
	}
	checkDSN(t, dsn.body, "nobody@contoso.com", "5.1.10", "550 5.1.10 RESOLVER.ADR.RecipNotFound; not found", "Subject: bad rcpt")
	e.run(func() bool { return e.record(id).Result != "" })
	r := e.record(id)
	if r.Result != ResultPartial || len(r.Attempts) != 1 {
		t.Errorf("record = %s after %d attempts, want partial after 1 (no retry of a 5xx)", r.Result, len(r.Attempts))
	}
}

func TestNullSenderGetsNoDSN(t *testing.T) {
	e := newEnv(t, nil)
	e.up.fail("data", smtpErr(554, smtp.EnhancedCode{5, 6, 0}, "message rejected"))
	id, err := e.sp.Enqueue(&Envelope{Account: testMailbox, Mailbox: testMailbox, From: testMailbox, OrigFrom: "",
		To: []string{"bob@example.com"}}, strings.NewReader(testMessage("null")))
	if err != nil {
		t.Fatal(err)
	}
	e.sp.Start()
	e.run(func() bool { return e.record(id).Result != "" })
	if r := e.record(id); r.Result != ResultBounced || len(r.DSNs) != 0 {
		t.Errorf("record = %s with DSNs %v, want bounced without a DSN", r.Result, r.DSNs)
	}
	if st := e.sp.Status(); st[0].Depth != 0 {
		t.Errorf("depth = %d, want 0 (no DSN queued)", st[0].Depth)
	}
}

// A mailbox-level refusal pauses the mailbox: no further submission until
// Resume, and the message is still there afterwards.
func TestMailboxLevelErrorPauses(t *testing.T) {
	for _, tc := range []struct {
		step string
		err  *smtp.SMTPError
	}{
		{"data", smtpErr(550, smtp.EnhancedCode{5, 2, 252}, "SendAsDenied; not allowed to send as")},
		{"mail", smtpErr(550, smtp.EnhancedCode{5, 7, 60}, "SMTP; Client does not have permissions to send as this sender")},
		{"open", smtpErr(535, smtp.EnhancedCode{5, 7, 139}, "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant")},
		{"data", smtpErr(554, smtp.EnhancedCode{5, 2, 255}, "too many invalid recipients")},
	} {
		t.Run(tc.err.Message[:12], func(t *testing.T) {
			e := newEnv(t, nil)
			paused := make(chan Pause, 1)
			e.opts.OnPause = func(p Pause) { paused <- p }
			e.restart()
			e.up.fail(tc.step, tc.err)
			id1 := e.enqueue("scanner@contoso.com", []string{"bob@example.com"}, testMessage("one"))
			e.enqueue("scanner@contoso.com", []string{"bob@example.com"}, testMessage("two"))
			e.sp.Start()
			var p Pause
			select {
			case p = <-paused:
			case <-time.After(20 * time.Second):
				t.Fatal("no pause")
			}
			if !strings.Contains(p.Reason, tc.err.Message) {
				t.Errorf("pause reason %q does not quote the reply %q", p.Reason, tc.err.Message)
			}
			// Hours later nothing more went upstream.
			e.clock.Advance(5 * time.Hour)
			opens, _, mails, got := e.up.snapshot()
			st := e.sp.Status()[0]
			if len(got) != 0 || mails > 1 || opens > 1 || st.Paused == nil || st.Depth != 2 {
				t.Fatalf("while paused: opens %d, mails %d, delivered %d, status %+v; want nothing sent, both queued", opens, mails, len(got), st)
			}
			// The pause survives a restart.
			e.restart()
			if st := e.sp.Status()[0]; st.Paused == nil {
				t.Fatal("pause lost on restart")
			}
			e.sp.Start()
			if err := e.sp.Resume(testMailbox); err != nil {
				t.Fatal(err)
			}
			e.run(e.delivered(2))
			e.run(func() bool { return e.record(id1).Result == ResultDelivered })
		})
	}
}

func TestAdminRetryAndDelete(t *testing.T) {
	e := newEnv(t, nil)
	e.up.fail("open", errConnReset)
	a := e.enqueue("scanner@contoso.com", []string{"bob@example.com"}, testMessage("a"))
	b := e.enqueue("scanner@contoso.com", []string{"bob@example.com"}, testMessage("b"))
	if err := e.sp.Delete(b); err != nil {
		t.Fatal(err)
	}
	e.sp.Start()
	e.waitAttempt(a)
	e.waitTimer() // the retry in 1m
	if err := e.sp.Retry(a); err != nil {
		t.Fatal(err)
	}
	start := e.clock.Now()
	e.run(e.delivered(1))
	_, _, _, got := e.up.snapshot()
	if len(got) != 1 || !bytes.Contains(got[0].body, []byte("Subject: a")) || !got[0].at.Equal(start) {
		t.Errorf("deliveries = %d (first at +%s), want only a, at once after Retry", len(got), got[0].at.Sub(start))
	}
	if r := e.record(b); r.Result != ResultDeleted {
		t.Errorf("deleted message's record = %q, want deleted", r.Result)
	}
	if err := e.sp.Delete("nope"); err == nil {
		t.Error("Delete of an unknown id succeeded")
	}
}

func (e *env) waitAttempt(id string) {
	e.t.Helper()
	for {
		select {
		case got := <-e.attempts:
			if got == id {
				return
			}
		case <-time.After(20 * time.Second):
			e.t.Fatalf("no attempt of %s", id)
		}
	}
}

// A restart after a partial delivery does not send again to those who got it.
func TestRestartKeepsRecipientProgress(t *testing.T) {
	e := newEnv(t, nil)
	e.up.fail("rcpt:carol@example.com", smtpErr(452, smtp.EnhancedCode{4, 5, 3}, "too many recipients this time"))
	id := e.enqueue("scanner@contoso.com", []string{"bob@example.com", "carol@example.com"}, testMessage("two rcpts"))
	e.sp.Start()
	e.waitAttempt(id)
	e.restart()
	e.sp.Start()
	e.run(e.delivered(2))
	_, _, _, got := e.up.snapshot()
	if !slices.Equal(got[0].to, []string{"bob@example.com"}) || !slices.Equal(got[1].to, []string{"carol@example.com"}) {
		t.Errorf("deliveries = %v then %v, want bob then carol", got[0].to, got[1].to)
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want class
	}{
		{smtpErr(550, smtp.EnhancedCode{5, 1, 1}, "no such user"), classMessage},
		{smtpErr(552, smtp.EnhancedCode{5, 3, 4}, "message too big"), classMessage},
		{smtpErr(550, smtp.EnhancedCode{5, 2, 251}, "mailbox full"), classMailbox},
		{smtpErr(550, smtp.EnhancedCode{5, 2, 253}, "invalid licence"), classMailbox},
		{smtpErr(550, smtp.EnhancedCode{5, 2, 250}, "other"), classMessage},
		{smtpErr(550, smtp.EnhancedCode{5, 2, 256}, "other"), classMessage},
		{smtpErr(535, smtp.EnhancedCode{5, 7, 3}, "Authentication unsuccessful"), classMailbox},
		{smtpErr(550, smtp.EnhancedCode{5, 7, 139}, "disabled"), classMailbox},
		{smtpErr(421, smtp.EnhancedCode{4, 4, 2}, "later"), classTemp},
		{smtpErr(554, smtp.EnhancedCode{5, 7, 1}, "Request is throttled"), classThrottle},
		{errConnReset, classTemp},
	} {
		if got, _ := classify(tc.err); got != tc.want {
			t.Errorf("classify(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}
