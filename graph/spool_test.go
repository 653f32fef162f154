package graph

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"mailproxy/spool"
)

var _ spool.Submitter = (*Session)(nil)

// notifying reports every Data outcome of the sessions the spool opens.
type notifying struct {
	*Session
	done chan error
}

func (n notifying) Data(r io.Reader) (string, error) {
	reply, err := n.Session.Data(r)
	n.done <- err
	return reply, err
}

func startSpool(t *testing.T, e *env, onPause func(spool.Pause)) (*spool.Spool, chan error) {
	t.Helper()
	st, err := spool.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 16)
	sp, err := spool.New(st, spool.Options{
		Open: func(ctx context.Context, account string) (spool.Submitter, error) {
			return notifying{Session: e.sender.NewSession(ctx), done: done}, nil
		},
		Logger:  slog.New(slog.DiscardHandler),
		OnPause: onPause,
	})
	if err != nil {
		t.Fatal(err)
	}
	sp.Start()
	t.Cleanup(func() { sp.Shutdown(context.Background()) })
	return sp, done
}

func waitData(t *testing.T, done chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("the spool did not deliver within 30s")
		return nil
	}
}

func TestSpoolDeliversThroughGraph(t *testing.T) {
	e := newEnv(t, defaults)
	sp, done := startSpool(t, e, nil)
	m := testMsg{from: testUser, subject: "scan 1", body: "page 1", to: []string{"bob@fabrikam.com"},
		atts: []attachment{{name: "scan.pdf", ctype: "application/pdf", size: mb(6), seed: 9}}}
	// The device addressed the header to bob only; the envelope adds a
	// Bcc-only archive address.
	_, err := sp.Enqueue(&spool.Envelope{Device: "mfp", Account: testUser, Mailbox: testUser, From: testUser, OrigFrom: testUser,
		To: []string{"bob@fabrikam.com", "archive@contoso.com"}}, strings.NewReader(string(m.bytes(t))))
	if err != nil {
		t.Fatal(err)
	}
	if err := waitData(t, done); err != nil {
		t.Fatalf("spool delivery through Graph = %v", err)
	}
	check(t, onlySent(t, e.graph), m, []string{"bob@fabrikam.com"}, nil, []string{"archive@contoso.com"})
}

func TestSpoolPausesOnSendAsDenied(t *testing.T) {
	e := newEnv(t, defaults)
	paused := make(chan spool.Pause, 1)
	sp, done := startSpool(t, e, func(p spool.Pause) { paused <- p })
	m := testMsg{from: "ceo@contoso.com", subject: "x", body: "b", to: []string{"bob@fabrikam.com"}}
	if _, err := sp.Enqueue(&spool.Envelope{Account: testUser, Mailbox: testUser, From: testUser, OrigFrom: testUser,
		To: m.to}, strings.NewReader(string(m.bytes(t)))); err != nil {
		t.Fatal(err)
	}
	wantReply(t, waitData(t, done), 550, [3]int{5, 7, 60}, "ErrorSendAsDenied")
	select {
	case p := <-paused:
		if !strings.Contains(p.Reason, "5.7.60") {
			t.Errorf("paused for %q, want the 5.7.60 reply", p.Reason)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the mailbox was not paused after 550 5.7.60")
	}
}
