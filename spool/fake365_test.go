package spool

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"mailproxy/internal/fake365"
)

// The spool against fake365's SMTP server over a real connection: its 4xx,
// 5xx, mailbox-level and throttling replies, with the spool's fake clock
// also driving fake365's rate limit.

type testValidator struct{}

func (testValidator) Validate(token string) (string, time.Time, bool) {
	u, ok := strings.CutPrefix(token, "tok:")
	return u, time.Now().Add(time.Hour), ok
}

type xoauth2 struct{ user, token string }

func (x xoauth2) Start() (string, []byte, error) {
	return "XOAUTH2", []byte("user=" + x.user + "\x01auth=Bearer " + x.token + "\x01\x01"), nil
}
func (x xoauth2) Next([]byte) ([]byte, error) { return []byte{}, nil }

// goSMTPSubmitter is a Submitter over go-smtp's client, standing in for
// the project's upstream client in this package's tests.
type goSMTPSubmitter struct{ c *smtp.Client }

func (g goSMTPSubmitter) Mail(from string, o *smtp.MailOptions) error { return g.c.Mail(from, o) }
func (g goSMTPSubmitter) Rcpt(to string, o *smtp.RcptOptions) error   { return g.c.Rcpt(to, o) }
func (g goSMTPSubmitter) Reset() error                                { return g.c.Reset() }
func (g goSMTPSubmitter) Quit() error                                 { g.c.Quit(); return g.c.Close() }
func (g goSMTPSubmitter) Data(r io.Reader) (string, error) {
	w, err := g.c.Data()
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(w, r); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

func newFake365Env(t *testing.T) (*env, *fake365.SMTPUpstream) {
	t.Helper()
	up, err := fake365.NewSMTPUpstream(testValidator{}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	e := newEnv(t, func(o *Options) {
		o.Open = func(ctx context.Context, account string) (Submitter, error) {
			c, err := smtp.Dial(up.Addr)
			if err != nil {
				return nil, err
			}
			if err := c.Auth(xoauth2{account, "tok:" + account}); err != nil {
				c.Close()
				return nil, err
			}
			return goSMTPSubmitter{c}, nil
		}
	})
	return e, up
}

func (e *env) upstreamCount(up *fake365.SMTPUpstream, n int) func() bool {
	return func() bool { return len(up.Messages()) >= n }
}

func TestAgainstFake365(t *testing.T) {
	e, up := newFake365Env(t)
	up.FailNext("DATA", fake365.SMTPTemporary)
	up.FailRcpt("nobody@contoso.com", fake365.SMTPRecipientNotFound)
	start := e.clock.Now()
	a := e.enqueue(testMailbox, []string{"bob@example.com"}, testMessage("temp"))
	b := e.enqueue(testMailbox, []string{"nobody@contoso.com", "carol@example.com"}, testMessage("bad rcpt"))
	e.sp.Start()
	// a after one retry; b to carol; b's DSN to the sender.
	e.run(e.upstreamCount(up, 3))
	e.run(func() bool { return e.record(a).Result != "" && e.record(b).Result != "" })
	if r := e.record(a); r.Result != ResultDelivered || len(r.Attempts) != 2 || !strings.HasPrefix(r.Attempts[0].Reply, "451 4.3.0") ||
		r.Attempts[1].Time.Sub(start) < time.Minute {
		t.Errorf("temp failure record = %+v", r)
	}
	if r := e.record(b); r.Result != ResultPartial || len(r.DSNs) != 1 || len(r.Attempts) != 1 {
		t.Errorf("bad recipient record = %+v, want partial after one attempt with a DSN", r)
	}
	var dsn *fake365.Message
	for _, m := range up.Messages() {
		if strings.Contains(string(m.Data), "multipart/report") {
			dsn = &m
		}
	}
	if dsn == nil {
		t.Fatal("fake365 got no DSN")
	}
	checkDSN(t, dsn.Data, "nobody@contoso.com", "5.1.10",
		"550 5.1.10 "+fake365.SMTPRecipientNotFound.Message, "Subject: bad rcpt")
}

func TestAgainstFake365Throttling(t *testing.T) {
	e, up := newFake365Env(t)
	e.sp.Shutdown(context.Background())
	e.opts.Rate = 600 // faster than the upstream allows: its throttle answers
	e.open()
	up.SetRate(3, time.Minute, 30*time.Second, e.clock.Now)
	for i := range 6 {
		e.enqueue(testMailbox, []string{"bob@example.com"}, testMessage(fmt.Sprint("burst ", i)))
	}
	start := e.clock.Now()
	e.sp.Start()
	e.run(e.upstreamCount(up, 6))
	recs, _, _ := e.sp.List(Query{Search: "throttled"})
	if len(recs) == 0 {
		t.Fatal("no attempt was throttled: the test did not reach fake365's limit")
	}
	if d := e.clock.Now().Sub(start); d < time.Minute {
		t.Errorf("six messages through a 3-a-minute upstream in %s", d)
	}
	// After a throttle the mailbox waited the suggested 30 s, not 1 m
	// per message: well under the 1 m doubling backoff of each message.
	if d := e.clock.Now().Sub(start); d > 5*time.Minute {
		t.Errorf("the burst took %s: throttling is backing off too long", d)
	}
}

func TestAgainstFake365MailboxLevel(t *testing.T) {
	e, up := newFake365Env(t)
	paused := make(chan Pause, 1)
	e.sp.Shutdown(context.Background())
	e.opts.OnPause = func(p Pause) { paused <- p }
	e.open()
	up.FailAt("MAIL", fake365.SMTPSendAsDenied)
	e.enqueue(testMailbox, []string{"bob@example.com"}, testMessage("denied"))
	e.sp.Start()
	select {
	case p := <-paused:
		if !strings.Contains(p.Reason, "5.7.60") {
			t.Errorf("pause reason %q", p.Reason)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no pause on 5.7.60")
	}
	up.FailAt("MAIL", nil)
	if err := e.sp.Resume(testMailbox); err != nil {
		t.Fatal(err)
	}
	e.run(e.upstreamCount(up, 1))
}
