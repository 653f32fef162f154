package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"mailproxy/config"
	"mailproxy/daemon"
)

// healthTime is how status prints the times of upstream logins and errors.
const healthTime = "2006-01-02 15:04:05 MST"

// healthStale is how old state_dir/health.json may be while serve runs: it
// is rewritten at least every daemon.HealthHeartbeat.
const healthStale = 2*daemon.HealthHeartbeat + time.Minute

// printHealth shows what the running (or last) serve knows of each
// account's upstreams, from state_dir/health.json: per protocol the last
// upstream login that really happened and the last error, then the recent
// errors. It says how old that is, and when no serve wrote it.
func printHealth(env *cmdEnv, cfg *config.Config, now time.Time) {
	out := env.stdout
	file := filepath.Join(cfg.StateDir, daemon.HealthFile)
	st, err := daemon.ReadHealth(cfg.StateDir)
	switch {
	case err != nil:
		fmt.Fprintf(out, "\nUpstream health: could not read %s: %v\n", file, err)
		return
	case st == nil:
		fmt.Fprintf(out, "\nUpstream health: unknown; no mailproxy serve has written %s (serve writes it while it runs).\n", file)
		return
	}
	age := now.Sub(st.Written).Round(time.Second)
	switch {
	case !st.Stopped.IsZero():
		fmt.Fprintf(out, "\nUpstream health, as mailproxy serve (pid %d) left it when it stopped at %s (%s ago); no serve runs since:\n",
			st.PID, st.Stopped.Local().Format(healthTime), age)
	case age > healthStale:
		fmt.Fprintf(out, "\n! Upstream health, written %s ago by mailproxy serve (pid %d), which should rewrite it every %s: is it still running?\n",
			age, st.PID, daemon.HealthHeartbeat)
	default:
		fmt.Fprintf(out, "\nUpstream health, from the running mailproxy serve (pid %d, started %s), written %s ago:\n",
			st.PID, st.Started.Local().Format(healthTime), age)
	}
	byUser := map[string]daemon.AccountHealth{}
	for _, a := range st.Accounts {
		byUser[strings.ToLower(a.Username)] = a
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, " \tUSER\tPROTOCOL\tLAST UPSTREAM LOGIN\tLAST UPSTREAM ERROR")
	var recent []string
	for _, a := range cfg.Accounts {
		h := byUser[strings.ToLower(a.Username)]
		if len(h.Upstreams) == 0 {
			fmt.Fprintf(tw, " \t%s\t-\tnone since serve started\t-\n", a.Username)
		}
		for _, u := range h.Upstreams {
			mark, login, last := " ", "-", "-"
			if !u.LastLogin.IsZero() {
				login = u.LastLogin.Local().Format(healthTime)
			}
			if u.Failing() {
				mark = "!"
				last = u.LastErrorAt.Local().Format(healthTime) + ": " + u.LastError
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", mark, a.Username, u.Proto, login, last)
		}
		if len(h.Recent) > 0 {
			recent = append(recent, fmt.Sprintf("\nRecent upstream errors of %s (newest first):", a.Username))
			for _, e := range h.Recent {
				recent = append(recent, fmt.Sprintf("  %s  %s: %s", e.At.Local().Format(healthTime), e.Proto, e.Text))
			}
		}
	}
	tw.Flush()
	for _, line := range recent {
		fmt.Fprintln(out, line)
	}
}
