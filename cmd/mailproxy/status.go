package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"mailproxy/config"
	"mailproxy/daemon"
	"mailproxy/internal/cmdline"
	"mailproxy/oauth"
)

// Refresh tokens end after 90 days without use (each refresh starts the 90
// days anew); status warns this long before.
const (
	refreshTokenLifetime = 90 * 24 * time.Hour
	refreshTokenWarn     = 14 * 24 * time.Hour
)

// Account states as status prints them.
const (
	stateSignedIn    = "signed in"
	stateNeedsSignIn = "needs sign-in"
	stateNotSignedIn = "not signed in"
	stateAppOnly     = "app-only"
)

func runStatus(_ context.Context, env *cmdEnv, args []string) error {
	fs := newFlags(env, "status")
	cfgPath := configFlag(env, fs)
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, `usage: mailproxy status [-config FILE]

One line per account: flow, state, who signed in, when the access token
expires, the refresh token's age, the last refresh and the last error with
what to do about it. Accounts that need attention are marked "!" and listed
first. Then the upstream health that the running mailproxy serve saves in
state_dir/health.json: per account and protocol the last upstream login
that really happened and the last upstream error, and each account's
recent upstream errors, with how old that is (or that no serve wrote it).
Reads no password and contacts nobody. Exits 0 even when accounts need
attention (the "!" lines say so).`)
		fs.PrintDefaults()
	}
	cfg, err := loadConfigFlags(env, fs, cfgPath, args)
	if err != nil {
		return err
	}
	if !storeExists(cfg) {
		// Nobody signed in yet. Opening the store would create its
		// directory, owned by whoever runs status (often root), which
		// serve could then not use.
		notSignedIn := func(user string) oauth.AccountStatus {
			return oauth.AccountStatus{Username: user, NeedsSignIn: true}
		}
		printStatus(env, cfg, notSignedIn, time.Now())
		printHealth(env, cfg, time.Now())
		printBlocks(env, cfg, time.Now())
		printSpoolPauses(env, cfg)
		return nil
	}
	m, st, err := newManager(cfg, discardLogger())
	if err != nil {
		return err
	}
	printStatus(env, cfg, m.Status, time.Now())
	printHealth(env, cfg, time.Now())
	printBlocks(env, cfg, time.Now())

	// Entries left behind by accounts removed from the config.
	if users, err := st.List(); err == nil {
		var orphans []string
		for _, u := range users {
			if cfg.Account(u) == nil {
				orphans = append(orphans, u)
			}
		}
		if len(orphans) > 0 {
			fmt.Fprintf(env.stdout, "\nStored sign-ins of accounts not in the config (remove with mailproxy logout): %s\n", strings.Join(orphans, ", "))
		}
	}
	printSpoolPauses(env, cfg)
	return nil
}

// storeExists reports whether the token store's directory exists (or
// cannot be checked: then opening it reports the problem).
func storeExists(cfg *config.Config) bool {
	if cfg.StateDir == "" {
		return true
	}
	_, err := os.Stat(filepath.Join(cfg.StateDir, "tokens"))
	return !errors.Is(err, fs.ErrNotExist)
}

func printStatus(env *cmdEnv, cfg *config.Config, status func(username string) oauth.AccountStatus, now time.Time) {
	var alerts []string
	tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, " \tUSER\tFLOW\tSTATE\tIDENTITY\tACCESS TOKEN EXPIRES\tREFRESH TOKEN AGE\tLAST REFRESH\tLAST ERROR")
	for _, a := range cfg.Accounts {
		mailbox := a.Mailbox
		if mailbox == "" {
			mailbox = a.Username
		}
		if a.Flow == config.FlowClientCredentials {
			fmt.Fprintf(tw, " \t%s\t%s\t%s\t%s\t-\t-\t-\t-\n", a.Username, a.Flow, stateAppOnly, "app for "+mailbox)
			continue
		}
		s := status(a.Username)
		mark, state := " ", stateSignedIn
		switch {
		case !s.SignedIn:
			mark, state = "!", stateNotSignedIn
			alerts = append(alerts, fmt.Sprintf("! %s is not signed in: run %s", a.Username, cmdline.Login(a.Username)))
		case s.NeedsSignIn:
			mark, state = "!", stateNeedsSignIn
			alerts = append(alerts, fmt.Sprintf("! %s needs a new sign-in: %s", a.Username, orDash(s.Hint)))
		}
		flow := s.Flow
		if flow == "" {
			flow = a.Flow
		}
		identity, expires, age, last, lastErr := "-", "-", "-", "-", "-"
		if s.SignedIn {
			if s.Identity != "" {
				identity = s.Identity
				if !strings.EqualFold(s.Identity, mailbox) {
					identity += " (delegate)"
				}
			}
			if !s.AccessExpiry.IsZero() {
				expires = s.AccessExpiry.Local().Format(timeLayout)
				if !now.Before(s.AccessExpiry) {
					expires += " (expired)"
				}
			}
			if !s.RefreshObtained.IsZero() {
				d := now.Sub(s.RefreshObtained)
				age = fmt.Sprintf("%d days", int(d/(24*time.Hour)))
				if d > refreshTokenLifetime-refreshTokenWarn && !s.NeedsSignIn {
					mark = "!"
					alerts = append(alerts, fmt.Sprintf("! %s: the refresh token is %s old and ends after %d days without use: log in once through the proxy, which refreshes it, or run %s",
						a.Username, age, int(refreshTokenLifetime/(24*time.Hour)), cmdline.Login(a.Username)))
				}
			}
			if !s.LastRefresh.IsZero() {
				last = s.LastRefresh.Local().Format(timeLayout)
			}
		}
		if s.LastError != "" {
			lastErr = s.LastError
			if s.Hint != "" {
				lastErr += ": " + s.Hint
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", mark, a.Username, flow, state, identity, expires, age, last, lastErr)
	}
	for _, line := range alerts {
		fmt.Fprintln(env.stdout, line)
	}
	if len(alerts) > 0 {
		fmt.Fprintln(env.stdout)
	}
	tw.Flush()
}

// printBlocks lists the login blocks the running serve saved
// (state_dir/lockout.json) that have not ended.
func printBlocks(env *cmdEnv, cfg *config.Config, now time.Time) {
	blocks, err := daemon.ReadBlocks(cfg.StateDir, now)
	if err != nil {
		fmt.Fprintf(env.stdout, "\nCould not read the login blocks: %v\n", err)
		return
	}
	if len(blocks) == 0 {
		return
	}
	fmt.Fprintln(env.stdout, "\nBlocked logins (too many wrong passwords; clear them on the admin page's Blocked logins page):")
	for _, b := range blocks {
		who := b.User
		if who == "" {
			who = "every username"
		}
		fmt.Fprintf(env.stdout, "! %s from %s until %s\n", who, b.Addr, b.Until.Local().Format("2006-01-02 15:04 MST"))
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
