package admin

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"mailproxy/spool"
)

type fakeSpool struct {
	mu      sync.Mutex // protects the fields below
	status  []spool.MailboxStatus
	records []*spool.Record
	queries []spool.Query
	resumed []string
}

func (f *fakeSpool) Status() []spool.MailboxStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]spool.MailboxStatus(nil), f.status...)
}

func (f *fakeSpool) List(q spool.Query) ([]*spool.Record, int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queries = append(f.queries, q)
	out, total := spool.Select(f.records, q)
	return out, total, nil
}

func (f *fakeSpool) Resume(mailbox string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resumed = append(f.resumed, mailbox)
	for i := range f.status {
		if strings.EqualFold(f.status[i].Mailbox, mailbox) {
			f.status[i].Paused = nil
			return nil
		}
	}
	return spool.ErrNotFound
}

func TestSpoolPage(t *testing.T) {
	now := time.Now()
	fs := &fakeSpool{status: []spool.MailboxStatus{{Mailbox: "scans@example.com", Depth: 2, Oldest: now.Add(-time.Hour),
		Delivered: 7, Deferred: 3, Bounced: 1,
		Paused: &spool.Pause{Mailbox: "scans@example.com", Since: now.Add(-10 * time.Minute), Reason: "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled"}}}}
	for i := range 60 {
		r := &spool.Record{ID: fmt.Sprintf("20261201T0900%02d-aaaa", i), Device: "mfp-floor2", Account: printer, Mailbox: "scans@example.com",
			From: "scans@example.com", OrigFrom: "mfp@printer.local", Rcpts: 1, Size: 1234, Received: now.Add(time.Duration(i-60) * time.Minute)}
		if i%2 == 0 {
			r.Result = spool.ResultDelivered
			r.Attempts = []spool.Attempt{{Time: r.Received, Delivered: []string{"bob@example.com"}, Reply: "2.0.0 OK <id@fake> Queued"}}
		}
		fs.records = append(fs.records, r)
	}
	e := newEnv(t, func(_ *env, o *Options) {
		o.Spool = fs
		o.KeepAliveGaps = func() []string { return []string{alice} }
	})
	b := e.browser()

	idx := b.get("/")
	if !strings.Contains(idx.body, "The spool of scans@example.com is paused") {
		t.Errorf("index page lacks the paused-mailbox alert:\n%s", idx.body)
	}
	r := b.get("/spool")
	if r.code != http.StatusOK {
		t.Fatalf("GET /spool = %d", r.code)
	}
	for _, want := range []string{`id="paused-scans@example.com"`, "SmtpClientAuthentication is disabled", "1–50 of 60",
		"20261201T090059-aaaa", "2.0.0 OK &lt;id@fake&gt; Queued", `id="keepalive"`, "<strong>" + alice + "</strong>: refresh token none (not signed in)", "sent as scans@example.com", `href="/spool?offset=50"`} {
		if !strings.Contains(r.body, want) {
			t.Errorf("/spool lacks %q", want)
		}
	}
	if strings.Contains(r.body, "20261201T090009-aaaa") {
		t.Error("/spool's first page shows an old record beyond the page size")
	}
	r = b.get("/spool?offset=50&q=mfp&account=" + url.QueryEscape(printer))
	if !strings.Contains(r.body, "51–60 of 60") || !strings.Contains(r.body, "20261201T090000-aaaa") {
		t.Errorf("second page:\n%s", r.body)
	}
	if q := fs.queries[len(fs.queries)-1]; q.Search != "mfp" || q.Account != printer || q.Offset != 50 {
		t.Errorf("query = %+v", q)
	}

	// Resume needs the CSRF token.
	if r := b.post("/spool/resume", url.Values{"mailbox": {"scans@example.com"}}); r.code == http.StatusSeeOther {
		t.Error("resume without a CSRF token was accepted")
	}
	csrf := b.csrf()
	r = b.post("/spool/resume", url.Values{"csrf": {csrf}, "mailbox": {"scans@example.com"}})
	if r.code != http.StatusSeeOther || len(fs.resumed) != 1 {
		t.Fatalf("POST /spool/resume = %d, resumed %v", r.code, fs.resumed)
	}
	if r := b.get("/spool"); strings.Contains(r.body, `id="paused-`) || !strings.Contains(r.body, "is resumed") {
		t.Errorf("after resume the page still shows the pause or no notice:\n%s", r.body)
	}

	m := b.get("/metrics")
	for _, want := range []string{`mailproxy_spool_queued{mailbox="scans@example.com"} 2`, `mailproxy_spool_delivered_total{mailbox="scans@example.com"} 7`,
		`mailproxy_spool_paused{mailbox="scans@example.com"} 0`, `mailproxy_spool_oldest_age_seconds{mailbox="scans@example.com"} 36`} {
		if !strings.Contains(m.body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestSpoolPageWithoutSpool(t *testing.T) {
	e := newEnv(t)
	if r := e.browser().get("/spool"); r.code != http.StatusNotFound {
		t.Errorf("GET /spool without a spool = %d, want 404", r.code)
	}
}
