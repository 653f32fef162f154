package admin

import (
	"context"
	"html/template"
	"net/http"
	"strings"
	"time"
)

// The account page: everything known about one account (flow, tokens,
// sessions, each protocol's last upstream login and error, the recent
// upstream errors, active lockouts) and "Send a test message", the first thing anyone setting up
// a scanner wants.

const accountHTML = `{{define "content"}}{{with .Data}}
{{if .Result}}<p class="banner {{if .ResultOK}}ok{{else}}bad{{end}}" role="status">{{.Result}}</p>{{end}}
<table class="details"><tbody>
<tr><th>Username</th><td>{{.Row.Username}}</td></tr>
<tr><th>Mailbox</th><td>{{.Row.Mailbox}}</td></tr>
{{if .Row.Identity}}<tr><th>Signed in as</th><td>{{.Row.Identity}}</td></tr>{{end}}
<tr><th>Provider · flow</th><td>{{.Row.Provider}} · {{.Row.Flow}}</td></tr>
<tr><th>State</th><td><span class="state {{.Row.StateClass}}" data-state="{{.Row.State}}">{{.Row.State}}</span></td></tr>
<tr><th>Access token expires</th><td>{{if .Row.AccessExpiry}}{{.Row.AccessExpiry}} ({{.Row.AccessExpiryAt}}){{else}}<span class="muted">—</span>{{end}}</td></tr>
<tr><th>Refresh token age</th><td>{{if .Row.RefreshAge}}{{.Row.RefreshAge}} (since {{.Row.RefreshAt}}){{else}}<span class="muted">—</span>{{end}}</td></tr>
<tr><th>Last refresh</th><td>{{if .LastRefresh}}{{.LastRefresh}}{{else}}<span class="muted">—</span>{{end}}</td></tr>
<tr><th>Sessions open</th><td>{{.Row.Sessions}}</td></tr>
<tr><th>Last token error</th><td>{{if .Row.LastError}}<span class="err">{{code .Row.LastError}}</span>{{if .Row.Hint}}<br><small>{{code .Row.Hint}}</small>{{end}}{{else if .Row.Hint}}<small>{{code .Row.Hint}}</small>{{else}}<span class="muted">—</span>{{end}}</td></tr>
</tbody></table>
<h3>Upstream</h3>
{{if .Row.Upstream}}<table><thead><tr><th>Protocol</th><th>Last login</th><th>Last error</th></tr></thead><tbody>
{{range .Row.Upstream}}<tr><td>{{.Proto}}</td><td>{{if .Login}}{{.Login}} ({{.LoginAt}}){{else}}<span class="muted">—</span>{{end}}</td><td>{{if .Error}}<span class="err" data-upstream="{{.Proto}}">{{.ErrorAt}}: {{.Error}}</span>{{else}}<span class="muted">—</span>{{end}}</td></tr>
{{end}}</tbody></table>{{else}}<p class="muted">No upstream login since mailproxy started.</p>{{end}}
<h3>Recent upstream errors</h3>
{{if .Recent}}<table><thead><tr><th>When</th><th>Protocol</th><th>Error</th></tr></thead><tbody>
{{range .Recent}}<tr class="recent-error"><td>{{.When}} ({{.At}})</td><td>{{.Proto}}</td><td><span class="err">{{.Text}}</span></td></tr>
{{end}}</tbody></table><p class="muted"><small>The last {{$.Data.RecentMax}} since mailproxy started, newest first.</small></p>{{else}}<p class="muted">None since mailproxy started.</p>{{end}}
<h3>Blocked logins</h3>
{{if .Blocks}}<ul>{{range .Blocks}}<li>{{if .User}}{{.User}}{{else}}every username{{end}} from {{.Addr}}, until {{.UntilAt}} (<a href="/lockout">clear</a>)</li>{{end}}</ul>{{else}}<p class="muted">None.</p>{{end}}
{{if .CanTest}}<h3>Send a test message</h3>
<p>Sends a short message from {{.Row.Mailbox}} through the upstream SMTP server, the way the proxy sends, and shows the server's answer.</p>
<form class="stack" method="post" action="/account/test">
<input type="hidden" name="csrf" value="{{$.CSRF}}"><input type="hidden" name="account" value="{{.Row.Username}}">
<label for="to">To</label><input id="to" name="to" type="email" required value="{{.To}}">
{{if .NeedsPassword}}<label for="password">Local password of {{.Row.Username}}</label><input id="password" name="password" type="password" autocomplete="off" required>{{end}}
<button type="submit">Send a test message</button>
</form>{{end}}
<p><a href="/">Back to the accounts</a></p>
{{end}}{{end}}`

func init() {
	base := template.Must(template.New("layout").Funcs(funcs).Parse(layoutHTML))
	pages["account"] = template.Must(base.Parse(accountHTML))
}

type accountData struct {
	Row           row
	Recent        []recentRow // the account's last upstream errors, newest first
	RecentMax     int
	LastRefresh   string
	Blocks        []lockoutRow
	CanTest       bool
	NeedsPassword bool
	To            string
	Result        string
	ResultOK      bool
}

type recentRow struct{ When, At, Proto, Text string }

// testSendTimeout bounds the page's test message.
const testSendTimeout = 90 * time.Second

func (s *Server) handleAccount(w http.ResponseWriter, r *http.Request) {
	sess := s.pageSession(w, r)
	if sess == nil {
		return
	}
	s.renderAccount(w, r, sess, r.URL.Query().Get("name"), accountData{})
}

func (s *Server) renderAccount(w http.ResponseWriter, r *http.Request, sess *session, name string, d accountData) {
	var acct *AccountInfo
	for _, a := range s.accounts() {
		if strings.EqualFold(a.Username, name) {
			acct = &a
			break
		}
	}
	if acct == nil {
		s.renderError(w, r, http.StatusNotFound, "No such account", "The account is not in the configuration (was it removed by a reload?).")
		return
	}
	now := s.now()
	rows, _, _ := s.rows([]AccountInfo{*acct}, now)
	d.Row = rows[0]
	if acct.Flow != FlowClientCredentials {
		if st := s.status(*acct); !st.LastRefresh.IsZero() {
			d.LastRefresh, _ = relative(st.LastRefresh, now)
			d.LastRefresh += " (" + stamp(st.LastRefresh) + ")"
		}
	}
	for _, e := range s.metrics.RecentUpstreamErrors(acct.Username) {
		rr := recentRow{Proto: e.Proto, Text: e.Text}
		rr.When, rr.At = relative(e.At, now)
		d.Recent = append(d.Recent, rr)
	}
	d.RecentMax = RecentErrors
	if s.opts.Blocks != nil {
		for _, b := range s.opts.Blocks() {
			if b.User == "" || strings.EqualFold(b.User, acct.Username) {
				rw := lockoutRow{User: b.User, Addr: b.Addr}
				rw.Until, rw.UntilAt = relative(b.Until, now)
				d.Blocks = append(d.Blocks, rw)
			}
		}
	}
	d.CanTest = s.opts.SendTest != nil
	d.NeedsPassword = acct.Flow != FlowClientCredentials
	s.render(w, r, http.StatusOK, "account", page{Title: acct.Username, CSRF: s.csrf(sess), Logout: s.opts.PasswordHash != "", Data: d})
}

func (s *Server) handleAccountTest(w http.ResponseWriter, r *http.Request) {
	sess := s.postSession(w, r)
	if sess == nil {
		return
	}
	name, to := r.PostForm.Get("account"), strings.TrimSpace(r.PostForm.Get("to"))
	d := accountData{To: to}
	if s.opts.SendTest == nil {
		s.renderError(w, r, http.StatusNotFound, "No test message", "This mailproxy cannot send test messages.")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), testSendTimeout)
	reply, err := s.opts.SendTest(ctx, name, r.PostForm.Get("password"), to)
	cancel()
	if err != nil {
		s.log.Warn("admin: test message failed", "account", name, "to", to, "err", err)
		d.Result = "The test message to " + to + " was not sent: " + err.Error()
	} else {
		s.log.Info("admin: test message sent", "account", name, "to", to, "reply", reply)
		d.Result, d.ResultOK = "Sent to "+to+". The upstream server answered: "+reply, true
	}
	s.renderAccount(w, r, sess, name, d)
}
