package admin

import (
	"fmt"
	"html/template"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"mailproxy/spool"
)

// SpoolView is what the page shows and does of the device relay's spool
// (*spool.Spool).
type SpoolView interface {
	Status() []spool.MailboxStatus
	List(q spool.Query) ([]*spool.Record, int, error)
	Resume(mailbox string) error
}

const spoolPageSize = 50

type spoolData struct {
	Flash            string
	NotKeptAlive     []keepAliveGap
	Mailboxes        []spoolMailbox
	Records          []spoolRecord
	Account, Search  string
	Total, From, To  int
	PrevURL, NextURL string
}

type keepAliveGap struct{ Username, RefreshAge string }

type spoolMailbox struct {
	Mailbox, Oldest, OldestAt     string
	Depth                         int
	Delivered, Deferred, Bounced  uint64
	Paused                        bool
	PausedSince, PausedAt, Reason string
}

type spoolRecord struct {
	ID, Device, Account, From, OrigFrom string
	Received, ReceivedAt                string
	Rcpts                               int
	Size                                int64
	State, StateClass                   string
	LastReply                           string
	Attempts                            []spoolAttempt
	DSNs                                []spool.DSNSent
}

type spoolAttempt struct {
	At, Reply                   string
	Delivered, Failed, Deferred int
}

func init() {
	base := template.Must(template.New("layout").Funcs(funcs).Parse(layoutHTML))
	pages["spool"] = template.Must(base.Parse(spoolHTML))
}

// spoolAlerts are the paused mailboxes, for the index page.
func (s *Server) spoolAlerts() []Alert {
	if s.opts.Spool == nil {
		return nil
	}
	var out []Alert
	for _, st := range s.opts.Spool.Status() {
		if st.Paused != nil {
			out = append(out, Alert{Username: st.Mailbox, Kind: AlertMailboxPaused,
				Message: fmt.Sprintf("The spool of %s is paused since %s: the upstream refused the mailbox (%s). Fix that, then resume it on the Spool page or with `mailproxy queue resume %s`.",
					st.Mailbox, stamp(st.Paused.Since), st.Paused.Reason, st.Mailbox)})
		}
	}
	return out
}

func (s *Server) handleSpool(w http.ResponseWriter, r *http.Request) {
	sess := s.pageSession(w, r)
	if sess == nil {
		return
	}
	if s.opts.Spool == nil {
		s.renderError(w, r, http.StatusNotFound, "No spool", "No device or account sends through the spool.")
		return
	}
	now := s.now()
	q := r.URL.Query()
	offset, _ := strconv.Atoi(q.Get("offset"))
	offset = max(offset, 0)
	d := spoolData{Flash: s.takeFlash(sess), Account: q.Get("account"), Search: q.Get("q")}
	for _, st := range s.opts.Spool.Status() {
		m := spoolMailbox{Mailbox: st.Mailbox, Depth: st.Depth, Delivered: st.Delivered, Deferred: st.Deferred, Bounced: st.Bounced}
		if !st.Oldest.IsZero() {
			m.Oldest, m.OldestAt = age(now.Sub(st.Oldest)), stamp(st.Oldest)
		}
		if p := st.Paused; p != nil {
			m.Paused, m.Reason = true, p.Reason
			m.PausedSince, m.PausedAt = age(now.Sub(p.Since)), stamp(p.Since)
		}
		d.Mailboxes = append(d.Mailboxes, m)
	}
	if s.opts.KeepAliveGaps != nil {
		for _, u := range s.opts.KeepAliveGaps() {
			g := keepAliveGap{Username: u, RefreshAge: "none (not signed in)"}
			if st := s.opts.Status(u); st.SignedIn && !st.RefreshObtained.IsZero() {
				g.RefreshAge = age(now.Sub(st.RefreshObtained)) + " old"
			}
			d.NotKeptAlive = append(d.NotKeptAlive, g)
		}
	}
	recs, total, err := s.opts.Spool.List(spool.Query{Account: d.Account, Search: d.Search, Offset: offset, Limit: spoolPageSize})
	if err != nil {
		s.log.Error("admin: read the delivery log", "err", err)
	}
	d.Total, d.From, d.To = total, offset+1, offset+len(recs)
	for _, rec := range recs {
		sr := spoolRecord{ID: rec.ID, Device: rec.Device, Account: rec.Account, From: rec.From, OrigFrom: rec.OrigFrom,
			Rcpts: rec.Rcpts, Size: rec.Size, State: rec.State(), DSNs: rec.DSNs}
		sr.Received, sr.ReceivedAt = relative(rec.Received, now)
		switch rec.Result {
		case "":
			sr.StateClass = "warn"
		case spool.ResultDelivered:
			sr.StateClass = "ok"
		case spool.ResultDeleted:
			sr.StateClass = "muted"
		default:
			sr.StateClass = "bad"
		}
		for _, a := range rec.Attempts {
			sr.Attempts = append(sr.Attempts, spoolAttempt{At: stamp(a.Time), Reply: a.Reply,
				Delivered: len(a.Delivered), Failed: len(a.Failed), Deferred: len(a.Deferred)})
			sr.LastReply = a.Reply
		}
		d.Records = append(d.Records, sr)
	}
	link := func(off int) string {
		v := url.Values{}
		if d.Account != "" {
			v.Set("account", d.Account)
		}
		if d.Search != "" {
			v.Set("q", d.Search)
		}
		v.Set("offset", strconv.Itoa(off))
		return "/spool?" + v.Encode()
	}
	if offset > 0 {
		d.PrevURL = link(max(offset-spoolPageSize, 0))
	}
	if offset+len(recs) < total {
		d.NextURL = link(offset + spoolPageSize)
	}
	s.render(w, r, http.StatusOK, "spool", page{Title: "Spool", CSRF: s.csrf(sess), Logout: s.opts.PasswordHash != "", Data: d})
}

func (s *Server) handleSpoolResume(w http.ResponseWriter, r *http.Request) {
	sess := s.postSession(w, r)
	if sess == nil {
		return
	}
	mailbox := r.PostForm.Get("mailbox")
	if s.opts.Spool == nil || mailbox == "" {
		s.renderError(w, r, http.StatusNotFound, "No such mailbox", "The spool has no mailbox of that name.")
		return
	}
	if err := s.opts.Spool.Resume(mailbox); err != nil {
		s.log.Error("admin: resume the spool", "mailbox", mailbox, "err", err)
		s.renderError(w, r, http.StatusNotFound, "Not resumed", "The spool of "+mailbox+" could not be resumed; the log says why.")
		return
	}
	s.log.Info("admin: spool resumed", "mailbox", mailbox)
	s.setFlash(sess, "The spool of "+mailbox+" is resumed: its messages are due now.")
	http.Redirect(w, r, "/spool", http.StatusSeeOther)
}

// writeSpoolMetrics adds the spool's gauges and counters to /metrics.
func writeSpoolMetrics(b *strings.Builder, st []spool.MailboxStatus, now time.Time) {
	type metric struct {
		name, typ, help string
		v               func(spool.MailboxStatus) (float64, bool)
	}
	for _, m := range []metric{
		{"mailproxy_spool_queued", "gauge", "Messages in the spool per mailbox.",
			func(s spool.MailboxStatus) (float64, bool) { return float64(s.Depth), true }},
		{"mailproxy_spool_oldest_age_seconds", "gauge", "Age of the oldest queued message per mailbox.",
			func(s spool.MailboxStatus) (float64, bool) {
				return math.Round(now.Sub(s.Oldest).Seconds()), !s.Oldest.IsZero()
			}},
		{"mailproxy_spool_paused", "gauge", "1 when the mailbox's spool is paused after a mailbox-level refusal.",
			func(s spool.MailboxStatus) (float64, bool) {
				if s.Paused != nil {
					return 1, true
				}
				return 0, true
			}},
		{"mailproxy_spool_delivered_total", "counter", "Spooled messages delivered since start per mailbox.",
			func(s spool.MailboxStatus) (float64, bool) { return float64(s.Delivered), true }},
		{"mailproxy_spool_deferred_total", "counter", "Delivery attempts that ended in a retry since start per mailbox.",
			func(s spool.MailboxStatus) (float64, bool) { return float64(s.Deferred), true }},
		{"mailproxy_spool_bounced_total", "counter", "Spooled messages (or some of their recipients) that failed for good since start per mailbox.",
			func(s spool.MailboxStatus) (float64, bool) { return float64(s.Bounced), true }},
	} {
		fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s %s\n", m.name, escapeHelp(m.help), m.name, m.typ)
		for _, s := range st {
			if v, ok := m.v(s); ok {
				fmt.Fprintf(b, "%s{mailbox=\"%s\"} %g\n", m.name, escapeLabel(strings.ToLower(s.Mailbox)), v)
			}
		}
	}
}

const spoolHTML = `{{define "content"}}{{with .Data}}
{{if .Flash}}<p class="banner ok" role="status">{{.Flash}}</p>{{end}}
<p><a href="/">Accounts</a></p>
{{range .Mailboxes}}{{if .Paused}}<div class="banner bad" role="alert" id="paused-{{lower .Mailbox}}"><strong>{{.Mailbox}} is paused</strong> since <span title="{{.PausedAt}}">{{.PausedSince}}</span>: {{.Reason}}
<form method="post" action="/spool/resume"><input type="hidden" name="csrf" value="{{$.CSRF}}"><input type="hidden" name="mailbox" value="{{.Mailbox}}"><button type="submit" aria-label="Resume {{.Mailbox}}">Resume</button></form></div>{{end}}{{end}}
{{if .Mailboxes}}<table>
<thead><tr><th>Mailbox</th><th>Queued</th><th>Oldest</th><th>Delivered</th><th>Deferred</th><th>Bounced</th></tr></thead>
<tbody>{{range .Mailboxes}}<tr>
<td data-label="Mailbox"><div>{{.Mailbox}}{{if .Paused}} <span class="state bad">paused</span>{{end}}</div></td>
<td data-label="Queued"><div>{{.Depth}}</div></td>
<td data-label="Oldest"><div>{{if .Oldest}}<span title="{{.OldestAt}}">{{.Oldest}}</span>{{else}}<span class="muted">—</span>{{end}}</div></td>
<td data-label="Delivered"><div>{{.Delivered}}</div></td>
<td data-label="Deferred"><div>{{.Deferred}}</div></td>
<td data-label="Bounced"><div>{{.Bounced}}</div></td>
</tr>{{end}}</tbody></table>{{end}}
{{if .NotKeptAlive}}<p class="banner warn" id="keepalive">Not kept alive (their tokens open only with a client's password, and no client logged in since start; a login renews them):
{{range .NotKeptAlive}}<br><strong>{{.Username}}</strong>: refresh token {{.RefreshAge}}{{end}}</p>{{end}}
<h2>Delivery log</h2>
<form method="get" action="/spool">
<label>Account <input name="account" value="{{.Account}}"></label>
<label>Search <input name="q" value="{{.Search}}" placeholder="id, device, sender, state, reply"></label>
<button type="submit">Search</button>
</form>
{{if not .Records}}<p class="muted">No message matches.</p>{{else}}
<p class="muted">{{.From}}–{{.To}} of {{.Total}}, newest first.</p>
<table>
<thead><tr><th>Queue id</th><th>Received</th><th>Device</th><th>Sender</th><th>Recipients</th><th>Size</th><th>State</th><th>Last reply</th></tr></thead>
<tbody>{{range .Records}}<tr id="msg-{{.ID}}">
<td data-label="Queue id"><div><code>{{.ID}}</code><br><small>{{.Account}}</small></div></td>
<td data-label="Received"><div><span title="{{.ReceivedAt}}">{{.Received}}</span></div></td>
<td data-label="Device"><div>{{if .Device}}{{.Device}}{{else}}<span class="muted">—</span>{{end}}</div></td>
<td data-label="Sender"><div>{{if .OrigFrom}}{{.OrigFrom}}{{else}}<span class="muted">&lt;&gt;</span>{{end}}{{if ne .From .OrigFrom}}<br><small>sent as {{.From}}</small>{{end}}</div></td>
<td data-label="Recipients"><div>{{.Rcpts}}</div></td>
<td data-label="Size"><div>{{.Size}}</div></td>
<td data-label="State"><div><span class="state {{.StateClass}}">{{.State}}</span></div></td>
<td data-label="Last reply"><div>{{if .LastReply}}<details><summary>{{.LastReply}}</summary>{{range .Attempts}}<small>{{.At}}: {{.Delivered}} delivered, {{.Failed}} failed, {{.Deferred}} deferred: {{.Reply}}</small><br>{{end}}{{range .DSNs}}<small>DSN {{.ID}} to {{.To}}</small><br>{{end}}</details>{{else}}<span class="muted">—</span>{{end}}</div></td>
</tr>{{end}}</tbody></table>
<p>{{if .PrevURL}}<a href="{{.PrevURL}}">Newer</a>{{end}} {{if .NextURL}}<a href="{{.NextURL}}">Older</a>{{end}}</p>
{{end}}
{{end}}{{end}}`
