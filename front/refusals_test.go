package front

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// A refusal storm (35,000 retries in 10 s) writes one line per key per
// 10 s, and the next line says how many were left out.
func TestRefusalsStorm(t *testing.T) {
	var buf lockedBuf
	log := slog.New(slog.NewTextHandler(&buf, nil))
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := &Refusals{Now: func() time.Time { return now }}
	for i := range 35000 {
		r.Log(log, slog.LevelWarn, "scanner@x", "imap login refused: too many upstream sessions for this mailbox", "mailbox", "scanner@x")
		if i%5000 == 0 {
			r.Log(log, slog.LevelWarn, "other@x", "imap login refused: too many upstream sessions for this mailbox", "mailbox", "other@x")
		}
	}
	if n := strings.Count(buf.b.String(), "\n"); n != 2 {
		t.Errorf("log lines for a storm on two keys = %d, want 2:\n%s", n, buf.b.String())
	}
	now = now.Add(11 * time.Second)
	r.Log(log, slog.LevelWarn, "scanner@x", "imap login refused: too many upstream sessions for this mailbox", "mailbox", "scanner@x")
	if !strings.Contains(buf.b.String(), "refused_since_last_log=35000") {
		t.Errorf("line after the storm does not count the refusals left out:\n%s", buf.b.String())
	}
}
