package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"mailproxy/internal/dovecot"
)

// TestMain lets the test binary play the child roles: the bench re-runs
// its own executable with "-role NAME".
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "-role" {
		os.Exit(runRole(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// TestQuick runs every workload end to end, scaled down further than
// -quick, so that the bench cannot rot. It checks that each ran and
// produced its rows, not the numbers: those depend on the machine.
func TestQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes and moves a few hundred MB; skipped with -short")
	}
	o := quickOptions()
	o.loginN = 10
	o.fetchSize = 4 << 20
	o.smtpMessages = 50
	o.bigSize = 2 << 20
	o.idle = []int{100, 300}
	o.latencyN = 20
	var progress bytes.Buffer
	o.progress = &progress
	ctx, cancel := testContext(t)
	defer cancel()
	rep, err := run(ctx, o)
	if err != nil {
		t.Fatalf("run(quick) = %v\nprogress:\n%s", err, progress.String())
	}
	var out bytes.Buffer
	rep.write(&out)
	t.Logf("report:\n%s", out.String())

	wantRows := []string{
		"IMAP login",
		"IMAP NOOP round trip",
		"IMAP IDLE notification",
		"IMAP FETCH 4 MiB, 1 client, 2 KiB records",
		"IMAP FETCH 4 MiB, 1 client, 4 KiB records",
		"IMAP FETCH 4 MiB, 1 client, 16 KiB records",
		"proxy cost per GB relayed, FETCH 1 client, 4 KiB records",
		"IMAP FETCH 4 MiB, 8 clients",
		"proxy CPU per GB relayed (IMAP",
		"SMTP 50 messages",
		"SMTP one 2 MiB message",
		"proxy CPU per GB relayed (SMTP",
		"SMTP one 2 MiB message, STARTTLS to the proxy",
		"proxy CPU per GB relayed (SMTP, both workloads, STARTTLS",
		"stalled mid-FETCH",
		"per idle IMAP session, 100 sessions",
		"100 idle sessions held",
		"per idle IMAP session, 300 sessions",
		"300 idle sessions held",
	}
	for _, w := range wantRows {
		found := false
		for _, r := range rep.rows {
			if strings.Contains(r.workload, w) {
				found = true
				if r.proxied == "" || strings.Contains(r.proxied, "NaN") || strings.Contains(r.proxied, "Inf") {
					t.Errorf("row %q: proxied = %q, want a number", r.workload, r.proxied)
				}
			}
		}
		if !found {
			t.Errorf("report has no row containing %q", w)
		}
	}
	for _, r := range rep.rows {
		if strings.HasSuffix(r.workload, "idle sessions held") && r.met != "yes" {
			t.Errorf("row %q: met = %q (%s), want yes", r.workload, r.met, r.proxied)
		}
	}
	if !strings.Contains(out.String(), "| workload | direct | proxied | ratio | target | met? |") {
		t.Errorf("report has no Markdown table header:\n%s", out.String())
	}
}

// TestQuickDovecot runs the IMAP workloads against a private Dovecot
// (internal/dovecot), as -upstream dovecot does.
func TestQuickDovecot(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes and Dovecot; skipped with -short")
	}
	if err := dovecot.Available(); err != nil {
		t.Skipf("real-server bench skipped: %v", err)
	}
	o, err := parseFlags([]string{"-quick", "-upstream", "dovecot", "-login-n", "10", "-fetch-mb", "4"})
	if err != nil {
		t.Fatal(err)
	}
	o.latencyN = 20
	o.fetchClients = 2
	var progress bytes.Buffer
	o.progress = &progress
	ctx, cancel := testContext(t)
	defer cancel()
	rep, err := run(ctx, o)
	if err != nil {
		t.Fatalf("run(quick, dovecot) = %v\nprogress:\n%s", err, progress.String())
	}
	var out bytes.Buffer
	rep.write(&out)
	t.Logf("report:\n%s", out.String())
	for _, w := range []string{"IMAP login", "IMAP NOOP round trip", "IMAP IDLE notification",
		"IMAP FETCH 4 MiB, 1 client, Dovecot's own records", "proxy cost per GB relayed, FETCH 1 client, Dovecot's"} {
		found := false
		for _, r := range rep.rows {
			found = found || strings.Contains(r.workload, w)
		}
		if !found {
			t.Errorf("report has no row containing %q", w)
		}
	}
}

// testContext bounds a bench run by the test binary's own deadline (go
// test -timeout), less a margin to report the progress: a fixed budget of
// minutes is too short on a loaded machine with the race detector, and
// the bench's own steps have their own timeouts.
func testContext(t *testing.T) (context.Context, context.CancelFunc) {
	dl, ok := t.Deadline()
	if !ok {
		return context.WithCancel(context.Background())
	}
	return context.WithDeadline(context.Background(), dl.Add(-30*time.Second))
}

func TestParseFlagsUpstream(t *testing.T) {
	for _, args := range [][]string{
		{"-upstream", "exchange"},
		{"-upstream", "dovecot", "-record-size", "4096"},
		{"-record-size", "100"},
		{"-record-size", "32768"},
	} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("parseFlags(%q) = nil error, want one", args)
		}
	}
	o, err := parseFlags([]string{"-record-size", "4096, 1024"})
	if err != nil || len(o.recordSizes) != 2 || o.recordSizes[0] != 4096 || o.recordSizes[1] != 1024 {
		t.Errorf("parseFlags(-record-size 4096, 1024) = %v, %v; want sizes [4096 1024]", o.recordSizes, err)
	}
}

func TestQuantile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3}
	for _, tc := range []struct {
		q    float64
		want float64
	}{{0.5, 3}, {0.99, 5}, {0.01, 1}, {1, 5}} {
		if got := quantile(xs, tc.q); got != tc.want {
			t.Errorf("quantile(%v, %v) = %v, want %v", xs, tc.q, got, tc.want)
		}
	}
	if got := quantile([]float64(nil), 0.5); got != 0 {
		t.Errorf("quantile(nil, 0.5) = %v, want 0", got)
	}
}

func TestMakeMessage(t *testing.T) {
	for _, size := range []int64{300, 301, 302, 1000, 1 << 16, 1<<16 + 1} {
		m := makeMessage(size, "test", 'x')
		if int64(len(m)) != size {
			t.Errorf("len(makeMessage(%d)) = %d, want %d", size, len(m), size)
		}
		if !bytes.HasSuffix(m, []byte("\r\n")) {
			t.Errorf("makeMessage(%d) does not end in CRLF", size)
		}
		for i, line := range bytes.Split(m[:len(m)-2], []byte("\r\n")) {
			if len(line) > 78 || bytes.ContainsAny(line, "\r\n") {
				t.Errorf("makeMessage(%d) line %d = %q, want at most 78 bytes and no bare CR or LF", size, i, line)
				break
			}
		}
	}
}

func TestLiteralSize(t *testing.T) {
	for _, tc := range []struct {
		line string
		n    int64
		ok   bool
	}{
		{"* 1 FETCH (UID 1 BODY[] {104857600}", 104857600, true},
		{"* 1 FETCH (BODY[] {12+}", 12, true},
		{"* OK done", 0, false},
		{"* 1 FETCH {x}", 0, false},
	} {
		n, ok := literalSize(tc.line)
		if n != tc.n || ok != tc.ok {
			t.Errorf("literalSize(%q) = %d, %v, want %d, %v", tc.line, n, ok, tc.n, tc.ok)
		}
	}
}
