package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailproxy/internal/testutil"
	"mailproxy/spool"
)

func runQueueCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb testutil.Buffer
	env := &cmdEnv{stdin: strings.NewReader(""), stdout: &out, stderr: &errb,
		getenv: func(string) string { return "" }}
	code := run(t.Context(), env, append([]string{"queue"}, args...))
	return code, out.String(), errb.String()
}

// queueFixture writes a config and a spool with two queued messages.
func queueFixture(t *testing.T) (cfgPath, dir string, ids []string) {
	t.Helper()
	root := t.TempDir()
	dir = filepath.Join(root, "state", "spool")
	cfgPath = filepath.Join(root, "mailproxy.toml")
	cfg := `state_dir = "state"
[admin]
listen = ""
[[provider]]
name = "contoso"
client_id = "11111111-2222-3333-4444-555555555555"
[[account]]
username = "scanner@contoso.com"
seal = "service"
`
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := spool.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := spool.New(st, spool.Options{Open: refuseOpen, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	for _, subj := range []string{"invoice run", "scan"} {
		id, err := sp.Enqueue(&spool.Envelope{Device: "mfp-floor2", Account: "scanner@contoso.com", Mailbox: "scanner@contoso.com",
			From: "scanner@contoso.com", OrigFrom: "mfp@printer.local", To: []string{"bob@example.com"}},
			strings.NewReader("Subject: "+subj+"\r\n\r\nbody\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	sp.Shutdown(context.Background())
	return cfgPath, dir, ids
}

func refuseOpen(context.Context, string) (spool.Submitter, error) {
	return nil, errors.New("no upstream in this test")
}

func TestQueueWithoutDaemon(t *testing.T) {
	cfgPath, _, ids := queueFixture(t)
	code, out, errOut := runQueueCmd(t, "-config", cfgPath, "list")
	if code != exitOK || !strings.Contains(out, ids[0]) || !strings.Contains(out, ids[1]) || !strings.Contains(out, "mfp-floor2") {
		t.Fatalf("queue list = %d\n%s%s", code, out, errOut)
	}
	if code, out, _ := runQueueCmd(t, "-config", cfgPath, "show", ids[0]); code != exitOK ||
		!strings.Contains(out, "state:     queued") || !strings.Contains(out, "mfp@printer.local (sent upstream as scanner@contoso.com)") {
		t.Errorf("queue show = %d\n%s", code, out)
	}
	if code, out, errOut := runQueueCmd(t, "-config", cfgPath, "delete", ids[0]); code != exitOK {
		t.Fatalf("queue delete = %d %s%s", code, out, errOut)
	}
	if code, _, errOut := runQueueCmd(t, "-config", cfgPath, "delete", "20261201T000000-000000000000"); code != exitFailure || !strings.Contains(errOut, "no such message") {
		t.Errorf("queue delete of an unknown id = %d %q", code, errOut)
	}
	if code, _, _ := runQueueCmd(t, "-config", cfgPath, "pause", "scanner@contoso.com"); code != exitOK {
		t.Fatalf("queue pause = %d", code)
	}
	_, out, _ = runQueueCmd(t, "-config", cfgPath, "list")
	if strings.Contains(out, ids[0]) || !strings.Contains(out, ids[1]) || !strings.Contains(out, "PAUSED scanner@contoso.com") {
		t.Errorf("list after delete and pause:\n%s", out)
	}
	var sout testutil.Buffer
	senv := &cmdEnv{stdin: strings.NewReader(""), stdout: &sout, stderr: &sout, getenv: func(string) string { return "" }}
	run(t.Context(), senv, []string{"status", "-config", cfgPath})
	if !strings.Contains(sout.String(), "spool of scanner@contoso.com PAUSED") {
		t.Errorf("status does not show the paused spool:\n%s", sout.String())
	}
	_, out, _ = runQueueCmd(t, "-config", cfgPath, "list", "-all", "-search", "deleted")
	if !strings.Contains(out, ids[0]) {
		t.Errorf("list -all -search deleted does not show the deleted message:\n%s", out)
	}
	runQueueCmd(t, "-config", cfgPath, "resume", "scanner@contoso.com")
	if _, out, _ = runQueueCmd(t, "-config", cfgPath, "list"); strings.Contains(out, "PAUSED") {
		t.Errorf("still paused after resume:\n%s", out)
	}
	if code, _, _ := runQueueCmd(t, "-config", cfgPath, "frobnicate"); code != exitUsage {
		t.Errorf("unknown queue command = exit %d, want %d", code, exitUsage)
	}
}

// With a daemon holding the spool, the command goes through the control
// directory and the daemon applies it.
func TestQueueTellsRunningDaemon(t *testing.T) {
	cfgPath, dir, ids := queueFixture(t)
	st, err := spool.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	release, err := st.Lock()
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if st2, _ := spool.OpenDir(dir); st2 != nil {
		if _, err := st2.Lock(); err == nil {
			t.Error("a second Lock of the same spool succeeded")
		}
	}
	paused := make(chan spool.Pause, 1)
	sp, err := spool.New(st, spool.Options{Open: refuseOpen, Logger: discardLogger(), OnPause: func(p spool.Pause) { paused <- p }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go sp.ServeControl(ctx, dir, 20*time.Millisecond)
	defer sp.Shutdown(context.Background())

	if code, out, errOut := runQueueCmd(t, "-config", cfgPath, "pause", "scanner@contoso.com"); code != exitOK {
		t.Fatalf("queue pause = %d %s%s", code, out, errOut)
	}
	select {
	case <-paused:
	default:
		t.Fatal("the daemon's spool did not pause")
	}
	if code, _, errOut := runQueueCmd(t, "-config", cfgPath, "retry", "nope"); code != exitFailure || !strings.Contains(errOut, "no such message") {
		t.Errorf("retry of an unknown id through the daemon = %d %q", code, errOut)
	}
	if code, _, _ := runQueueCmd(t, "-config", cfgPath, "delete", ids[1]); code != exitOK {
		t.Errorf("delete through the daemon failed")
	}
	if st := sp.Status(); st[0].Depth != 1 || st[0].Paused == nil {
		t.Errorf("daemon's status = %+v, want one queued, paused", st[0])
	}
}

// A check of the account that passes resumes its paused spool.
func TestCheckAccountResumesSpool(t *testing.T) {
	e := newCLIEnv(t)
	e.idp.SignInAs(cliAlice)
	e.mustLogin(t, cliAlice)
	dir := filepath.Join(e.dir, "state", "spool")
	if err := spool.ApplyDir(t.Context(), dir, spool.Command{Op: "pause", Arg: cliAlice}); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := e.checkAccount(t, cliAlice)
	if code != exitOK || !strings.Contains(out, "the check passed, so it is resumed") {
		t.Fatalf("check -account = %d\n%s%s", code, out, errOut)
	}
	st, err := spool.ReadOnly(dir)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := st.Paused(); len(p) != 0 {
		t.Errorf("still paused after a passing check: %+v", p)
	}
}
