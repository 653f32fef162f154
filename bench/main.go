// Command bench measures mailproxy against a direct connection to the same
// upstream, in the same run: IMAP login latency, IMAP FETCH throughput,
// SMTP submission, the proxy's memory per idle and per stalled session, and
// the proxy's CPU time per GB relayed. docs/BENCHMARKS.md has the results
// and how to read them.
//
// Three kinds of process take part, so that the proxy's RSS and CPU time
// are its own:
//
//   - this one, the orchestrator, which also runs every client;
//   - the fake Microsoft 365 (-role upstream): fake Entra ID, IMAP with
//     implicit TLS and SMTP with STARTTLS, from internal/fake365;
//   - the proxy (-role proxy), built from the real packages: auth.Accounts
//     with password_hash accounts and an oauth.Source token source,
//     front/imap.Server and front/smtp.Server, strict upstream TLS. The
//     memory workloads each get a fresh proxy process.
//
// Usage:
//
//	go run ./bench            # full run, about 5 to 10 minutes
//	go run ./bench -quick     # smoke run, well under a minute
//	go run ./bench -only login,fetch -proxy-cpuprofile /tmp/cpu.out
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// options are the knobs of one run. The full defaults match issue 8;
// -quick scales everything down.
type options struct {
	loginN       int   // login iterations per mode
	fetchSize    int64 // bytes of the FETCH message
	fetchRounds  int   // rounds per mode, per client count
	fetchClients int   // parallel FETCH clients (each has its own mailbox)
	smtpMessages int   // messages in the submission workload
	smtpSize     int   // bytes per message
	smtpSessions int   // concurrent SMTP sessions
	smtpRounds   int   // rounds per mode
	bigSize      int   // bytes of the single large SMTP message
	bigRounds    int   // rounds per mode
	idle         []int // idle session counts, each in a fresh proxy
	stallClients int   // clients stalling mid-FETCH
	stallAfter   int64 // bytes each stalling client reads before it stops

	// smtpPrototype also runs the SMTP workloads through the pass-through
	// experiment in smtpproto.go.
	smtpPrototype bool
	// linkMiBps puts the IMAP upstream behind a shared link of this speed
	// (0: none), as the Internet is in a deployment.
	linkMiBps float64
	// recordSizes are the TLS record sizes the fake IMAP upstream writes,
	// one FETCH measurement each (fake365 only).
	recordSizes []int
	// upstream is the IMAP server: upstreamFake or upstreamDovecot.
	upstream string
	// latencyN is the number of NOOP round trips and IDLE notifications
	// per mode.
	latencyN int

	only        map[string]bool // workloads to run; empty: all
	cpuProfile  string          // proxy CPU profile of the main proxy process
	memProfile  string          // proxy heap profile, written at its exit
	proxyLogDir string          // "" = a temporary directory
	progress    io.Writer
}

func fullOptions() options {
	return options{
		loginN:       300,
		fetchSize:    100 << 20,
		fetchRounds:  7,
		fetchClients: 8,
		smtpMessages: 1000,
		smtpSize:     50 << 10,
		smtpSessions: 4,
		smtpRounds:   7,
		bigSize:      30 << 20,
		bigRounds:    7,
		idle:         []int{2000, 10000},
		stallClients: 8,
		stallAfter:   1 << 20,
		recordSizes:  []int{2 << 10, 4 << 10, 16 << 10},
		upstream:     upstreamFake,
		latencyN:     200,
	}
}

// The IMAP servers the bench can run against.
const (
	upstreamFake    = "fake365"
	upstreamDovecot = "dovecot"
)

func quickOptions() options {
	o := fullOptions()
	o.loginN = 40
	o.fetchSize = 16 << 20
	o.fetchRounds = 1
	o.smtpMessages = 200
	o.smtpRounds = 1
	o.bigSize = 4 << 20
	o.bigRounds = 1
	o.idle = []int{200, 1000}
	o.stallAfter = 256 << 10
	o.latencyN = 40
	return o
}

// workloads, in the order they run.
var workloadNames = []string{"login", "latency", "fetch", "smtp", "stall", "idle", "pop3"}

func (o *options) runs(name string) bool { return len(o.only) == 0 || o.only[name] }

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-role" {
		os.Exit(runRole(os.Args[2:]))
	}
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	rep, err := run(context.Background(), o)
	if rep != nil {
		rep.write(os.Stdout)
		if missed := rep.failed(); len(missed) > 0 {
			fmt.Fprintf(os.Stderr, "bench: targets missed: %s\n", strings.Join(missed, "; "))
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	quick := fs.Bool("quick", false, "smoke run: small sizes and counts, under a minute")
	only := fs.String("only", "", "comma-separated workloads to run: "+strings.Join(workloadNames, ","))
	loginN := fs.Int("login-n", 0, "login iterations per mode (0: preset)")
	fetchMB := fs.Int("fetch-mb", 0, "FETCH message size in MiB (0: preset)")
	fetchClients := fs.Int("fetch-clients", 0, "parallel FETCH clients of the last pass (0: preset; 1: no parallel pass)")
	rounds := fs.Int("rounds", 0, "rounds per mode for the throughput workloads (0: preset)")
	idle := fs.String("idle", "", "comma-separated idle session counts (empty: preset)")
	cpuProf := fs.String("proxy-cpuprofile", "", "write a CPU profile of the main proxy process to `file`")
	memProf := fs.String("proxy-memprofile", "", "write heap profiles of the proxy processes to `file`.NAME: at the measurement point of the memory workloads, at exit for the main proxy")
	proto := fs.Bool("smtp-prototype", false, "also run the SMTP workloads through the pass-through experiment (bench/smtpproto.go)")
	link := fs.Float64("link-mibps", 0, "put the fake IMAP upstream behind a shared link of this many MiB/s, like the Internet in a deployment (0: none)")
	logDir := fs.String("proxy-logdir", "", "directory for the proxy processes' logs (default: a temporary one)")
	records := fs.String("record-size", "", "comma-separated TLS record sizes in bytes the fake IMAP upstream writes, one FETCH measurement each (default 2048,4096,16384)")
	upstream := fs.String("upstream", upstreamFake, "IMAP server: "+upstreamFake+", or "+upstreamDovecot+" (a private Dovecot 2.3; runs login,latency,fetch unless -only says otherwise)")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	o := fullOptions()
	if *quick {
		o = quickOptions()
	}
	if *loginN > 0 {
		o.loginN = *loginN
	}
	if *fetchMB > 0 {
		o.fetchSize = int64(*fetchMB) << 20
	}
	if *fetchClients > 0 {
		o.fetchClients = *fetchClients
	}
	if *rounds > 0 {
		o.fetchRounds, o.smtpRounds, o.bigRounds = *rounds, *rounds, *rounds
	}
	var err error
	if *idle != "" {
		if o.idle, err = intList(*idle, func(n int) bool { return n > 0 }, "-idle: %q is not a positive count"); err != nil {
			return options{}, err
		}
	}
	if *only != "" {
		if o.only, err = parseOnly(*only); err != nil {
			return options{}, err
		}
	}
	if err := o.setUpstream(*upstream, *records != ""); err != nil {
		return options{}, err
	}
	if *records != "" {
		inRange := func(n int) bool { return n >= 256 && n <= 16<<10 }
		if o.recordSizes, err = intList(*records, inRange, "-record-size: %q is not a size from 256 to 16384"); err != nil {
			return options{}, err
		}
	}
	o.cpuProfile, o.memProfile, o.proxyLogDir = *cpuProf, *memProf, *logDir
	o.smtpPrototype = *proto
	o.linkMiBps = *link
	o.progress = os.Stderr
	return o, nil
}

// intList parses a comma-separated list of integers that ok accepts; bad
// is the error for an item that is not one, a format taking the item.
func intList(list string, ok func(int) bool, bad string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || !ok(n) {
			return nil, fmt.Errorf(bad, f)
		}
		out = append(out, n)
	}
	return out, nil
}

// parseOnly parses -only: comma-separated names from workloadNames.
func parseOnly(list string) (map[string]bool, error) {
	only := make(map[string]bool)
	for _, w := range strings.Split(list, ",") {
		w = strings.TrimSpace(w)
		if !slices.Contains(workloadNames, w) {
			return nil, fmt.Errorf("-only: unknown workload %q (have %s)", w, strings.Join(workloadNames, ","))
		}
		only[w] = true
	}
	return only, nil
}

// setUpstream applies -upstream. Dovecot chooses its own TLS record size,
// so -record-size (records) does not go with it, and without -only it runs
// the IMAP workloads only.
func (o *options) setUpstream(upstream string, records bool) error {
	switch upstream {
	case upstreamFake:
	case upstreamDovecot:
		if records {
			return errors.New("-record-size: Dovecot chooses its own record size (4 KiB); use it with -upstream " + upstreamFake)
		}
		o.recordSizes = []int{0}
		if o.only == nil {
			o.only = map[string]bool{"login": true, "latency": true, "fetch": true}
		}
	default:
		return fmt.Errorf("-upstream: %q is neither %s nor %s", upstream, upstreamFake, upstreamDovecot)
	}
	o.upstream = upstream
	return nil
}

// run runs the selected workloads and returns the report, which holds
// whatever finished even when err is not nil.
func run(ctx context.Context, o options) (*report, error) {
	if o.progress == nil {
		o.progress = io.Discard
	}
	start := time.Now()
	rep := &report{opts: o}
	rep.machine = describeMachine()
	e, err := newEnv(ctx, o)
	if err != nil {
		return rep, err
	}
	defer e.close()
	steps := []struct {
		name string
		f    func(context.Context, *report) error
	}{
		{"login", e.benchLogin},
		{"latency", e.benchLatency},
		{"fetch", e.benchFetch},
		{"smtp", e.benchSMTP},
		{"stall", e.benchStall},
		{"idle", e.benchIdle},
		{"pop3", e.benchPOP3},
	}
	for _, s := range steps {
		if !o.runs(s.name) {
			continue
		}
		t := time.Now()
		e.logf("== %s", s.name)
		if err := s.f(ctx, rep); err != nil {
			return rep, fmt.Errorf("workload %s: %w", s.name, err)
		}
		e.logf("== %s done in %s", s.name, time.Since(t).Round(time.Millisecond))
	}
	rep.elapsed = time.Since(start)
	return rep, nil
}
