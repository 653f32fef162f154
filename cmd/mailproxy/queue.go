package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"mailproxy/config"
	"mailproxy/spool"
)

const queueHelp = `usage: mailproxy queue [-config FILE] list [-all] [-account USER] [-search TEXT] [-limit N]
       mailproxy queue [-config FILE] show ID
       mailproxy queue [-config FILE] retry ID | delete ID
       mailproxy queue [-config FILE] pause MAILBOX | resume MAILBOX

The device relay's spool (spool.dir): list shows the queued messages (with
-all, every message the delivery log keeps), show one message's record
(times, each attempt with the upstream's reply, DSNs sent). retry makes a
message due now, delete drops it without a DSN, pause stops a mailbox's
deliveries and resume restarts them (a mailbox the upstream refused is
paused on its own).

A running daemon is told through spool.dir/control and answers within a
few seconds; without one, the spool directory is changed directly.

`

// queueAnswerTimeout bounds the wait for a running daemon's answer.
const queueAnswerTimeout = 15 * time.Second

func runQueue(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlags(env, "queue")
	cfgPath := configFlag(env, fs)
	fs.Usage = func() {
		fmt.Fprint(env.stderr, queueHelp)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usagef("queue needs a command: list, show ID, retry ID, delete ID, pause MAILBOX or resume MAILBOX")
	}
	op, rest := fs.Arg(0), fs.Args()[1:]
	cfg, err := loadConfig(env, *cfgPath)
	if err != nil {
		return err
	}
	dir := cfg.Spool.Dir
	switch op {
	case "list":
		return queueList(env, cfg, rest)
	case "show":
		if len(rest) != 1 {
			return usagef("queue show needs one queue ID")
		}
		return queueShow(env.stdout, cfg, rest[0])
	case "retry", "delete", "pause", "resume":
		if len(rest) != 1 {
			what := "queue ID"
			if op == "pause" || op == "resume" {
				what = "MAILBOX"
			}
			return usagef("queue %s needs one %s", op, what)
		}
		arg := rest[0]
		if op == "pause" || op == "resume" {
			if a := cfg.Account(arg); a != nil {
				arg = a.Mailbox
			}
		}
		if err := queueApply(ctx, dir, spool.Command{Op: op, Arg: arg}); err != nil {
			if errors.Is(err, spool.ErrNotFound) || strings.Contains(err.Error(), spool.ErrNotFound.Error()) {
				return fmt.Errorf("%s %s: no such message or mailbox in the spool (%s)", op, arg, dir)
			}
			return err
		}
		fmt.Fprintf(env.stdout, "%s %s: done\n", op, arg)
		return nil
	}
	return usagef("unknown queue command %q: use list, show, retry, delete, pause or resume", op)
}

// queueApply tells the running daemon, or changes the spool itself when
// none runs.
func queueApply(ctx context.Context, dir string, c spool.Command) error {
	ctx, cancel := context.WithTimeout(ctx, queueAnswerTimeout)
	defer cancel()
	return spool.ApplyDir(ctx, dir, c)
}

func openLog(cfg *config.Config) ([]*spool.Record, []spool.Pause, error) {
	st, err := spool.ReadOnly(cfg.Spool.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil // nothing spooled yet
	}
	if err != nil {
		return nil, nil, err
	}
	paused, _ := st.Paused()
	recs, err := spool.ReadLog(st, time.Now().Add(-cfg.Spool.LogRetention))
	return recs, paused, err
}

func queueList(env *cmdEnv, cfg *config.Config, args []string) error {
	fs := newFlags(env, "queue list")
	all := fs.Bool("all", false, "every message the delivery log keeps, not only queued ones")
	account := fs.String("account", "", "only this account's messages")
	search := fs.String("search", "", "only messages whose id, device, sender, state or replies contain `TEXT`")
	limit := fs.Int("limit", 100, "at most `N` messages, newest first")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("queue list takes no arguments besides its flags")
	}
	recs, paused, err := openLog(cfg)
	if err != nil {
		return err
	}
	out := env.stdout
	for _, p := range paused {
		fmt.Fprintf(out, "PAUSED %s since %s: %s\n  resume with: mailproxy queue resume %s\n",
			p.Mailbox, p.Since.Local().Format(timeLayout), p.Reason, p.Mailbox)
	}
	sel, total := spool.Select(recs, spool.Query{Account: *account, Search: *search, Queued: !*all, Limit: *limit})
	if total == 0 {
		if *all {
			fmt.Fprintln(out, "The delivery log is empty.")
		} else {
			fmt.Fprintln(out, "No message is queued.")
		}
		return nil
	}
	tw := tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tRECEIVED\tMAILBOX\tDEVICE\tFROM\tRCPTS\tSIZE\tSTATE\tATTEMPTS\tLAST REPLY")
	for _, r := range sel {
		last := ""
		if n := len(r.Attempts); n > 0 {
			last = r.Attempts[n-1].Reply
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%d\t%s\n", r.ID, r.Received.Local().Format(timeLayout),
			r.Mailbox, dash(r.Device), dash(r.OrigFrom), r.Rcpts, r.Size, r.State(), len(r.Attempts), shorten(last))
	}
	tw.Flush()
	if total > len(sel) {
		fmt.Fprintf(out, "%d of %d shown; use -limit or -search.\n", len(sel), total)
	}
	return nil
}

func queueShow(out io.Writer, cfg *config.Config, id string) error {
	recs, _, err := openLog(cfg)
	if err != nil {
		return err
	}
	for _, r := range recs {
		if r.ID != id {
			continue
		}
		fmt.Fprintf(out, "id:        %s\nstate:     %s\nreceived:  %s\ndevice:    %s\naccount:   %s\nmailbox:   %s\n",
			r.ID, r.State(), r.Received.Local().Format(timeLayout), dash(r.Device), r.Account, r.Mailbox)
		fmt.Fprintf(out, "from:      %s (sent upstream as %s)\nrecipients: %d\nsize:      %d bytes\n", dash(r.OrigFrom), dash(r.From), r.Rcpts, r.Size)
		for i, a := range r.Attempts {
			fmt.Fprintf(out, "attempt %d: %s delivered %d, failed %d, deferred %d\n  reply: %s\n", i+1,
				a.Time.Local().Format(timeLayout), len(a.Delivered), len(a.Failed), len(a.Deferred), a.Reply)
			if !a.Next.IsZero() {
				fmt.Fprintf(out, "  next attempt: %s\n", a.Next.Local().Format(timeLayout))
			}
		}
		for _, d := range r.DSNs {
			fmt.Fprintf(out, "DSN:       %s to %s\n", d.ID, d.To)
		}
		if !r.Done.IsZero() {
			fmt.Fprintf(out, "done:      %s (%s)\n", r.Done.Local().Format(timeLayout), r.Result)
		}
		return nil
	}
	return fmt.Errorf("show %s: the delivery log has no such message (kept for spool.log_retention, %s)", id, cfg.Spool.LogRetention)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printSpoolPauses adds the paused mailboxes of the spool to `status`:
// nothing is sent from them until an admin resumes them.
func printSpoolPauses(env *cmdEnv, cfg *config.Config) {
	_, paused, err := openLog(cfg)
	if err != nil || len(paused) == 0 {
		return
	}
	fmt.Fprintln(env.stdout)
	for _, p := range paused {
		fmt.Fprintf(env.stdout, "spool of %s PAUSED since %s: %s\n  fix the cause, then: mailproxy queue resume %s\n",
			p.Mailbox, p.Since.Local().Format(timeLayout), p.Reason, p.Mailbox)
	}
}

// resumeAfterCheck resumes the account's mailbox in the spool after a
// check of it succeeded: the refusal that paused it is gone.
func resumeAfterCheck(ctx context.Context, env *cmdEnv, cfg *config.Config, acct *config.Account) {
	_, paused, err := openLog(cfg)
	if err != nil {
		return
	}
	for _, p := range paused {
		if !strings.EqualFold(p.Mailbox, acct.Mailbox) {
			continue
		}
		if err := queueApply(ctx, cfg.Spool.Dir, spool.Command{Op: "resume", Arg: p.Mailbox}); err != nil {
			fmt.Fprintf(env.stdout, "The spool of %s stays paused: %v\n", p.Mailbox, err)
			return
		}
		fmt.Fprintf(env.stdout, "The spool of %s was paused (%s); the check passed, so it is resumed.\n", p.Mailbox, p.Reason)
	}
}
