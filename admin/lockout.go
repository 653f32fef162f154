package admin

import (
	"fmt"
	"html/template"
	"net/http"
	"time"
)

// LoginBlock is an active lockout block (auth.Block) as the page shows it.
type LoginBlock struct {
	User  string // "" for the per-address cap (every username from Addr)
	Addr  string // address or IPv6 /64
	Until time.Time
}

type lockoutData struct {
	Flash  string
	Blocks []lockoutRow
}

type lockoutRow struct {
	User, Addr, Until, UntilAt string
}

const lockoutHTML = `{{define "content"}}{{with .Data}}
{{if .Flash}}<p class="banner ok" role="status">{{.Flash}}</p>{{end}}
<p>Logins refused after too many wrong passwords. A block covers one username from one address (IPv6: its /64), or, after many usernames failed there, the whole address. It ends by itself; clear it when you fixed the client's password.</p>
{{if .Blocks}}<table><thead><tr><th>Username</th><th>From</th><th>Until</th><th></th></tr></thead><tbody>
{{range .Blocks}}<tr><td>{{if .User}}{{.User}}{{else}}<em>every username</em>{{end}}</td><td>{{.Addr}}</td><td title="{{.UntilAt}}">{{.Until}}</td>
<td><form method="post" action="/lockout/clear"><input type="hidden" name="csrf" value="{{$.CSRF}}"><input type="hidden" name="user" value="{{.User}}"><input type="hidden" name="addr" value="{{.Addr}}"><button type="submit" aria-label="Clear the block of {{.User}} from {{.Addr}}">Clear</button></form></td></tr>
{{end}}</tbody></table>{{else}}<p>No login is blocked.</p>{{end}}
<p><a href="/">Back to the accounts</a></p>
{{end}}{{end}}`

func init() {
	base := template.Must(template.New("layout").Funcs(funcs).Parse(layoutHTML))
	pages["lockout"] = template.Must(base.Parse(lockoutHTML))
}

// lockoutAlerts tell the index page that logins are blocked.
func (s *Server) lockoutAlerts() []Alert {
	if s.opts.Blocks == nil {
		return nil
	}
	var out []Alert
	now := s.now()
	for _, b := range s.opts.Blocks() {
		who := "every username"
		if b.User != "" {
			who = b.User
		}
		out = append(out, Alert{Username: b.User, Kind: AlertLoginBlocked,
			Message: fmt.Sprintf("Logins of %s from %s are blocked after too many wrong passwords, until %s (%s). Clear it on the Blocked logins page (/lockout).",
				who, b.Addr, stamp(b.Until), relativeText(b.Until, now))})
	}
	return out
}

func relativeText(t, now time.Time) string {
	rel, _ := relative(t, now)
	return rel
}

func (s *Server) handleLockout(w http.ResponseWriter, r *http.Request) {
	sess := s.pageSession(w, r)
	if sess == nil {
		return
	}
	d := lockoutData{Flash: s.takeFlash(sess)}
	if s.opts.Blocks != nil {
		now := s.now()
		for _, b := range s.opts.Blocks() {
			rw := lockoutRow{User: b.User, Addr: b.Addr}
			rw.Until, rw.UntilAt = relative(b.Until, now)
			d.Blocks = append(d.Blocks, rw)
		}
	}
	s.render(w, r, http.StatusOK, "lockout", page{Title: "Blocked logins", CSRF: s.csrf(sess), Logout: s.opts.PasswordHash != "", Data: d})
}

func (s *Server) handleLockoutClear(w http.ResponseWriter, r *http.Request) {
	sess := s.postSession(w, r)
	if sess == nil {
		return
	}
	user, addr := r.PostForm.Get("user"), r.PostForm.Get("addr")
	if s.opts.ClearBlock == nil || !s.opts.ClearBlock(user, addr) {
		s.setFlash(sess, "That block had ended already.")
		http.Redirect(w, r, "/lockout", http.StatusSeeOther)
		return
	}
	s.log.Info("admin: login block cleared", "user", user, "addr", addr)
	who := user
	if who == "" {
		who = "every username"
	}
	s.setFlash(sess, fmt.Sprintf("Logins of %s from %s are allowed again.", who, addr))
	http.Redirect(w, r, "/lockout", http.StatusSeeOther)
}
