package admin

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"sort"
	"strings"
	"time"

	"mailproxy/oauth"
)

// page is what every template gets. Data is the page's own view; no view
// type has a field that could hold a token or a secret.
type page struct {
	Title   string
	CSRF    string
	Refresh bool // reload every few seconds (device sign-in in progress)
	Logout  bool // show the admin logout button
	Data    any

	formTargets []string // extra form-action origins for the CSP
}

type indexData struct {
	Flash     string
	Alerts    []Alert
	Rows      []row
	CanSignIn bool
	Protocols []ProtoStats // connections and logins per protocol
}

// row is one account in the table.
type row struct {
	Username, Mailbox, Provider, Flow string
	Identity                          string
	State, StateClass                 string
	AccessExpiry, AccessExpiryAt      string
	RefreshAge, RefreshAt             string
	LastLogin, LastLoginAt            string
	LastError, Hint                   string
	Upstream                          []upstreamRow // per protocol, what the fronts last saw
	Sessions                          int64
	SignIn, Device, SignOut           bool
}

// upstreamRow is one protocol's last upstream login and failure.
type upstreamRow struct {
	Proto          string
	Login, LoginAt string // "" when none since start
	Error, ErrorAt string // the last failure, when it is newer than the last login
}

type loginData struct{ Next, Error string }

type passwordData struct {
	ID, Account, Identity, Error string
	MinLen                       int // auth.MinPasswordLength
}

type deviceData struct {
	ID, Account, UserCode, VerificationURI string
	Expires                                time.Time
}

type failedData struct {
	Account, Error, Hint string
	// Browser, when set, explains why the device flow cannot work and
	// offers the browser sign-in at once (needs the page's CSRF).
	Browser string
}

type signOutData struct{ Account string }

type wrongHostData struct{ Redirect, Page string }

type errorData struct{ Message string }

// States of an account.
const (
	stateSignedIn    = "signed in"
	stateNeedsSignIn = "needs sign-in"
	stateError       = "error"
	stateAppOnly     = "app-only"
)

func (s *Server) handleIndex(w http.ResponseWriter, r *http.Request) {
	sess := s.pageSession(w, r)
	if sess == nil {
		return
	}
	now := s.now()
	d := indexData{Flash: s.takeFlash(sess), CanSignIn: s.canSignIn()}
	rows, statuses, targets := s.rows(s.accounts(), now)
	d.Rows = rows
	d.Alerts = append(Alerts(statuses, now), s.spoolAlerts()...)
	d.Alerts = append(d.Alerts, s.lockoutAlerts()...)
	d.Protocols = s.metrics.Protocols()
	pg := page{Title: "Accounts", CSRF: s.csrf(sess), Data: d}
	pg.formTargets = targets
	s.render(w, r, http.StatusOK, "index", pg)
}

// rows builds the table rows of accounts (the index and the account
// page), their statuses, and the sign-in form targets (origins), sorted.
func (s *Server) rows(accounts []AccountInfo, now time.Time) ([]row, []oauth.AccountStatus, []string) {
	var rows []row
	var statuses []oauth.AccountStatus
	targets := map[string]bool{}
	for _, a := range accounts {
		st := s.status(a)
		statuses = append(statuses, st)
		rw := row{
			Username: a.Username, Mailbox: a.Mailbox, Provider: a.Provider, Flow: a.Flow,
			Identity: st.Identity,
			Sessions: s.metrics.SessionsOpen(a.Username),
		}
		if rw.Mailbox == "" {
			rw.Mailbox = a.Username
		}
		if t := s.metrics.LastUpstreamLogin(a.Username); !t.IsZero() {
			rw.LastLogin, rw.LastLoginAt = relative(t, now)
		}
		failing := false
		for _, u := range s.metrics.Upstreams(a.Username) {
			ur := upstreamRow{Proto: u.Proto}
			if !u.LastLogin.IsZero() {
				ur.Login, ur.LoginAt = relative(u.LastLogin, now)
			}
			if u.Failing() {
				failing = true
				ur.Error, ur.ErrorAt = u.LastError, stamp(u.LastErrorAt)
			}
			rw.Upstream = append(rw.Upstream, ur)
		}
		switch {
		case a.Flow == FlowClientCredentials && failing:
			rw.State, rw.StateClass = stateError, "warn"
		case a.Flow == FlowClientCredentials:
			rw.State, rw.StateClass = stateAppOnly, "muted"
		case !st.SignedIn || st.NeedsSignIn:
			rw.State, rw.StateClass = stateNeedsSignIn, "bad"
		case st.LastError != "" || failing:
			rw.State, rw.StateClass = stateError, "warn"
		default:
			rw.State, rw.StateClass = stateSignedIn, "ok"
		}
		if a.Flow != FlowClientCredentials {
			rw.LastError, rw.Hint = st.LastError, st.Hint
			if st.SignedIn {
				if !st.AccessExpiry.IsZero() {
					rw.AccessExpiry, rw.AccessExpiryAt = relative(st.AccessExpiry, now)
				}
				if !st.RefreshObtained.IsZero() {
					rw.RefreshAge = age(now.Sub(st.RefreshObtained))
					rw.RefreshAt = stamp(st.RefreshObtained)
				}
				rw.SignOut = s.opts.Remove != nil
			}
			if p := s.provider(a.Username); p != nil && s.canSignIn() {
				rw.SignIn = p.AuthURL != ""
				rw.Device = p.DeviceAuthURL != ""
				if o := origin(p.AuthURL); o != "" {
					targets[o] = true
				}
			}
		}
		rows = append(rows, rw)
	}
	var origins []string
	for o := range targets {
		origins = append(origins, o)
	}
	sort.Strings(origins)
	return rows, statuses, origins
}

// render executes the named page into a buffer, then sends it with code.
func (s *Server) render(w http.ResponseWriter, r *http.Request, code int, name string, pg page) {
	pg.Logout = s.opts.PasswordHash != "" && pg.CSRF != "" && name != "login"
	var buf bytes.Buffer
	if err := pages[name].ExecuteTemplate(&buf, "layout", pg); err != nil {
		s.log.Error("admin: render page", "page", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	if len(pg.formTargets) > 0 {
		h.Set("Content-Security-Policy", csp(pg.formTargets))
	}
	h.Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	if r.Method != http.MethodHead {
		w.Write(buf.Bytes())
	}
}

func (s *Server) renderError(w http.ResponseWriter, r *http.Request, code int, title, msg string) {
	s.render(w, r, code, "error", page{Title: title, Data: errorData{Message: msg}})
}

// relative says when t is relative to now ("in 42 min", "3 days ago") and
// gives the absolute time for a tooltip.
func relative(t, now time.Time) (string, string) {
	d := t.Sub(now)
	if d >= 0 {
		return "in " + age(d), stamp(t)
	}
	return age(-d) + " ago", stamp(t)
}

func stamp(t time.Time) string { return t.Format("2006-01-02 15:04:05 MST") }

// age says a duration the way a person reads it.
func age(d time.Duration) string {
	switch {
	case d < time.Minute:
		return "less than a minute"
	case d < 2*time.Hour:
		return fmt.Sprintf("%d min", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d hours", int(d/time.Hour))
	}
	return fmt.Sprintf("%d days", int(d/(24*time.Hour)))
}

var funcs = template.FuncMap{
	"lower": strings.ToLower,
	"code":  codeSpans,
	"clock": func(t time.Time) string { return t.Format("15:04:05") },
}

// pages holds one template per page, each with the layout.
var pages = func() map[string]*template.Template {
	m := make(map[string]*template.Template)
	base := template.Must(template.New("layout").Funcs(funcs).Parse(layoutHTML))
	for name, body := range pageHTML {
		m[name] = template.Must(template.Must(base.Clone()).Parse(body))
	}
	return m
}()

const layoutHTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{{if .Refresh}}<meta http-equiv="refresh" content="3">{{end}}
<meta name="referrer" content="no-referrer">
<title>{{.Title}} · mailproxy</title>
<style>
:root { color-scheme: light dark; --fg: #1d2327; --muted: #5f6b73; --bg: #fff; --line: #d9dee2; --card: #f6f8f9;
  --ok: #146c2e; --okbg: #dff3e4; --bad: #a4161a; --badbg: #fde2e1; --warn: #8a5300; --warnbg: #fff1d6; --accent: #0b5cad; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6e9eb; --muted: #9aa5ad; --bg: #15191c; --line: #2f373d; --card: #1d2327;
  --ok: #7fd69b; --okbg: #173b24; --bad: #ff9b97; --badbg: #4a1c1c; --warn: #ffc86b; --warnbg: #43310f; --accent: #6cb2ff; } }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; align-items: center; justify-content: space-between; gap: 1em; padding: .6em 1em; border-bottom: 1px solid var(--line); }
header h1 { font-size: 1.15em; margin: 0; }
header a { color: inherit; text-decoration: none; }
main { padding: 1em; max-width: 80em; margin: 0 auto; }
h2 { font-size: 1.1em; margin: .2em 0 .8em; }
a { color: var(--accent); }
.banner { border-radius: 6px; padding: .6em .9em; margin: 0 0 .6em; border: 1px solid; }
.banner.bad { background: var(--badbg); color: var(--bad); }
.banner.warn { background: var(--warnbg); color: var(--warn); }
.banner.ok { background: var(--okbg); color: var(--ok); }
table { width: 100%; border-collapse: collapse; }
th, td { text-align: left; vertical-align: top; padding: .45em .5em; border-bottom: 1px solid var(--line); overflow-wrap: break-word; }
th { font-size: .85em; color: var(--muted); font-weight: 600; white-space: nowrap; }
td small, .muted { color: var(--muted); }
.state { display: inline-block; padding: .05em .5em; border-radius: 999px; font-size: .85em; font-weight: 600; white-space: nowrap; }
.state.ok { background: var(--okbg); color: var(--ok); }
.state.bad { background: var(--badbg); color: var(--bad); }
.state.warn { background: var(--warnbg); color: var(--warn); }
.state.muted { background: var(--card); color: var(--muted); }
.err { color: var(--bad); }
.actions form { display: inline; }
button, .button { white-space: nowrap; font: inherit; padding: .35em .8em; border-radius: 6px; border: 1px solid var(--accent); background: var(--accent); color: #fff; cursor: pointer; text-decoration: none; display: inline-block; margin: .1em 0; }
button.secondary, .button.secondary { background: transparent; color: var(--accent); }
button.danger { background: var(--bad); border-color: var(--bad); }
form.stack { max-width: 26em; }
footer { margin: 2em 0 1em; }
code { font: .95em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--card); padding: 0 .25em; border-radius: 4px; }
form.stack label { display: block; margin: .7em 0 .2em; font-weight: 600; }
input[type=password] { font: inherit; width: 100%; padding: .45em; border: 1px solid var(--line); border-radius: 6px; background: var(--bg); color: var(--fg); }
form.stack button { margin-top: 1em; }
.code { font: 600 1.8em/1.2 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; letter-spacing: .12em; padding: .3em .6em; background: var(--card); border-radius: 6px; display: inline-block; }
@media (max-width: 760px) {
  table, tbody, tr, td { display: block; width: 100%; }
  thead { display: none; }
  tr { border: 1px solid var(--line); border-radius: 8px; padding: .4em .6em; margin: 0 0 .8em; background: var(--card); }
  td { border: 0; padding: .25em 0; display: grid; grid-template-columns: 8.5em minmax(0, 1fr); gap: .8em; }
  td::before { content: attr(data-label); color: var(--muted); font-size: .85em; padding-top: .1em; }
  td.actions { display: block; padding-top: .5em; }
  td.actions::before { display: none; }
}
</style>
</head>
<body>
<header><h1><a href="/">mailproxy</a></h1>
{{if .Logout}}<form method="post" action="/logout"><input type="hidden" name="csrf" value="{{.CSRF}}"><button class="secondary" type="submit">Log out</button></form>{{end}}
</header>
<main>
<h2>{{.Title}}</h2>
{{template "content" .}}
</main>
<footer><small class="muted"><a href="/metrics">Metrics</a> · <a href="/healthz">Health</a></small></footer>
</body>
</html>
`

var pageHTML = map[string]string{
	"index": `{{define "content"}}{{with .Data}}
{{if .Flash}}<p class="banner ok" role="status">{{.Flash}}</p>{{end}}
{{range .Alerts}}<p class="banner {{if or (eq .Kind 1) (eq .Kind 3)}}bad{{else}}warn{{end}}" role="alert">{{code .Message}}</p>{{end}}
{{if not .Rows}}<p class="muted">No accounts are configured.</p>{{else}}
<table>
<thead><tr><th>Account</th><th>State</th><th>Access token</th><th>Refresh token age</th><th>Last upstream login</th><th>Sessions</th><th>Last error</th><th></th></tr></thead>
<tbody>
{{range .Rows}}<tr id="account-{{lower .Username}}">
<td data-label="Account"><div><strong><a href="/account?name={{.Username}}">{{.Username}}</a></strong>{{if ne .Mailbox .Username}}<br><small>mailbox {{.Mailbox}}</small>{{end}}{{if and .Identity (ne (lower .Identity) (lower .Username))}}<br><small>signed in as {{.Identity}}</small>{{end}}<br><small>{{.Provider}} · {{.Flow}}</small></div></td>
<td data-label="State"><div><span class="state {{.StateClass}}" data-state="{{.State}}">{{.State}}</span></div></td>
<td data-label="Access token"><div>{{if .AccessExpiry}}<span title="{{.AccessExpiryAt}}">{{.AccessExpiry}}</span>{{else}}<span class="muted">—</span>{{end}}</div></td>
<td data-label="Refresh token age"><div>{{if .RefreshAge}}<span title="{{.RefreshAt}}">{{.RefreshAge}}</span>{{else}}<span class="muted">—</span>{{end}}</div></td>
<td data-label="Last upstream login"><div>{{range .Upstream}}{{.Proto}} {{if .Login}}<span title="{{.LoginAt}}">{{.Login}}</span>{{else}}<span class="muted">—</span>{{end}}<br>{{else}}<span class="muted">—</span>{{end}}</div></td>
<td data-label="Sessions"><div>{{.Sessions}}</div></td>
<td data-label="Last error"><div>{{range .Upstream}}{{if .Error}}<span class="err" data-upstream="{{.Proto}}">{{.Proto}} upstream, {{.ErrorAt}}: {{.Error}}</span><br>{{end}}{{end}}{{if .LastError}}<span class="err">{{code .LastError}}</span>{{end}}{{if .Hint}}{{if .LastError}}<br>{{end}}<small>{{code .Hint}}</small>{{end}}{{if not (or .LastError .Hint .Upstream)}}<span class="muted">—</span>{{end}}</div></td>
<td class="actions">
{{if .SignIn}}<form method="post" action="/signin"><input type="hidden" name="csrf" value="{{$.CSRF}}"><input type="hidden" name="account" value="{{.Username}}"><input type="hidden" name="method" value="authcode"><button type="submit" name="signin" aria-label="Sign in {{.Username}}">{{if .SignOut}}Sign in again{{else}}Sign in{{end}}</button></form>{{end}}
{{if .Device}}<form method="post" action="/signin"><input type="hidden" name="csrf" value="{{$.CSRF}}"><input type="hidden" name="account" value="{{.Username}}"><input type="hidden" name="method" value="device"><button class="secondary" type="submit" aria-label="Sign in {{.Username}} with a code">Sign in with a code</button></form>{{end}}
{{if .SignOut}}<a class="button secondary" href="/signout?account={{.Username}}">Sign out</a>{{end}}
</td>
</tr>
{{end}}</tbody>
</table>{{end}}
{{if .Protocols}}<h2>Protocols</h2>
<table id="protocols">
<thead><tr><th>Protocol</th><th>Connections open</th><th>Connections since start</th><th>Logins</th><th>Refused logins</th><th>Tokens refused upstream</th></tr></thead>
<tbody>
{{range .Protocols}}<tr id="proto-{{.Name}}"><td data-label="Protocol"><div>{{.Name}}</div></td><td data-label="Connections open"><div>{{.Open}}</div></td><td data-label="Connections since start"><div>{{.Total}}</div></td><td data-label="Logins"><div>{{.LoginsOK}}</div></td><td data-label="Refused logins"><div>{{.LoginsFailed}}</div></td><td data-label="Tokens refused upstream"><div>{{.UpstreamAuthFailed}}</div></td></tr>
{{end}}</tbody>
</table>{{end}}
{{end}}{{end}}`,

	"login": `{{define "content"}}{{with .Data}}
{{if .Error}}<p class="banner bad" role="alert">{{.Error}}</p>{{end}}
<form class="stack" method="post" action="/login">
<input type="hidden" name="csrf" value="{{$.CSRF}}">
<input type="hidden" name="next" value="{{.Next}}">
<label for="password">Admin password</label>
<input id="password" type="password" name="password" autocomplete="current-password" required autofocus>
<button type="submit">Log in</button>
</form>
{{end}}{{end}}`,

	"password": `{{define "content"}}{{with .Data}}
{{if .ID}}
{{if .Error}}<p class="banner bad" role="alert">{{.Error}}</p>{{end}}
<p>{{if .Identity}}Signed in as <strong>{{.Identity}}</strong>. {{end}}Choose the password that mail clients will use to log in as <strong>{{.Account}}</strong>. It encrypts the new tokens; mailproxy keeps no copy of it. At least {{.MinLen}} characters: it alone protects the tokens on disk.</p>
<form class="stack" method="post" action="/password">
<input type="hidden" name="csrf" value="{{$.CSRF}}">
<input type="hidden" name="id" value="{{.ID}}">
<input type="text" name="username" value="{{.Account}}" autocomplete="username" hidden>
<label for="password">Password</label>
<input id="password" type="password" name="password" autocomplete="new-password" minlength="{{.MinLen}}" required autofocus>
<label for="password2">The same password again</label>
<input id="password2" type="password" name="password2" autocomplete="new-password" minlength="{{.MinLen}}" required>
<button type="submit">Save</button>
</form>
{{else}}<p>This sign-in is no longer waiting for a password. <a href="/">Start again</a>.</p>{{end}}
{{end}}{{end}}`,

	"device": `{{define "content"}}{{with .Data}}
<p>To sign in <strong>{{.Account}}</strong>, open <a href="{{.VerificationURI}}" target="_blank" rel="noopener noreferrer">{{.VerificationURI}}</a> on any device and enter this code:</p>
<p class="code" id="user-code">{{.UserCode}}</p>
<p class="muted">This page updates by itself once the sign-in is done. The code is valid until {{clock .Expires}}.</p>
<form method="post" action="/device/{{.ID}}/cancel"><input type="hidden" name="csrf" value="{{$.CSRF}}"><button class="secondary" type="submit">Cancel</button></form>
{{end}}{{end}}`,

	"failed": `{{define "content"}}{{with .Data}}
<p class="banner bad" role="alert">The sign-in of {{.Account}} did not complete: {{.Error}}</p>
{{if .Browser}}<p>The sign-in with a code cannot work here: {{.Browser}}. Sign in with the browser instead:</p>
<form method="post" action="/signin"><input type="hidden" name="csrf" value="{{$.CSRF}}"><input type="hidden" name="account" value="{{.Account}}"><input type="hidden" name="method" value="authcode"><button type="submit" aria-label="Sign in {{.Account}} with the browser">Sign in with the browser</button></form>
{{else if .Hint}}<p>{{code .Hint}}</p>{{end}}
<p><a href="/">Back to the accounts</a></p>
{{end}}{{end}}`,

	"signout": `{{define "content"}}{{with .Data}}
<p>Signing out deletes the stored tokens of <strong>{{.Account}}</strong>. Its mail clients can no longer log in until the account is signed in again.</p>
<form method="post" action="/signout">
<input type="hidden" name="csrf" value="{{$.CSRF}}">
<input type="hidden" name="account" value="{{.Account}}">
<button class="danger" type="submit">Sign out {{.Account}}</button> <a href="/">Cancel</a>
</form>
{{end}}{{end}}`,

	"wronghost": `{{define "content"}}{{with .Data}}
<p>The identity provider sends the browser back to <strong>{{.Redirect}}</strong>, which is not the address this page was opened at, so the answer could not be tied to this browser.</p>
<p>Open <a href="{{.Page}}">{{.Page}}</a> and sign in from there.</p>
{{end}}{{end}}`,

	"error": `{{define "content"}}{{with .Data}}
<p>{{.Message}}</p>
<p><a href="/">Back to the accounts</a></p>
{{end}}{{end}}`,
}

// codeSpans shows text's `code spans` (hints name commands that way) as
// <code>, escaping everything else.
func codeSpans(text string) template.HTML {
	parts := strings.Split(text, "`")
	if len(parts)%2 == 0 {
		return template.HTML(template.HTMLEscapeString(text)) // unbalanced: show as is
	}
	var b strings.Builder
	for i, p := range parts {
		if i%2 == 1 {
			b.WriteString("<code>" + template.HTMLEscapeString(p) + "</code>")
		} else {
			b.WriteString(template.HTMLEscapeString(p))
		}
	}
	return template.HTML(b.String())
}
