package oauth

import (
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mailproxy/internal/testutil"
	"mailproxy/oauth/store"
)

// A token file whose sealed part was damaged is not a wrong password: the
// login that has the right password learns that the account needs a new
// sign-in, the log says so at ERROR (once, not per attempt), and status
// shows it.
func TestManagerDamagedFile(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	st := e.openStore(t, dir)
	var logs testutil.Buffer
	m := NewManager(st, slog.New(slog.NewTextHandler(&logs, nil)))
	m.Now = e.clock.Now
	m.SetAccount(Account{Username: testUser, Flow: "authcode", Provider: e.p})
	e.signIn(t, m, "correct horse")

	files, _ := filepath.Glob(filepath.Join(dir, "*.token"))
	if len(files) != 1 {
		t.Fatalf("token files = %v, want one", files)
	}
	var fj map[string]any
	data, _ := os.ReadFile(files[0])
	json.Unmarshal(data, &fj)
	fj["meta"].(map[string]any)["identity"] = "mallory@contoso.com"
	data, _ = json.Marshal(fj)
	os.WriteFile(files[0], data, 0o600)

	if _, _, err := m.Open(t.Context(), testUser, "wrong horse!"); !errors.Is(err, store.ErrBadCredentials) {
		t.Errorf("Open(wrong password) = %v, want ErrBadCredentials", err)
	}
	for range 3 {
		_, _, err := m.Open(t.Context(), testUser, "correct horse")
		if !errors.Is(err, store.ErrCorrupt) {
			t.Fatalf("Open(damaged file) = %v, want ErrCorrupt", err)
		}
		// The fronts recognise it by behaviour (auth.TokenAuthError).
		var ns interface{ NeedsSignIn() bool }
		if !errors.As(err, &ns) || !ns.NeedsSignIn() {
			t.Errorf("Open(damaged file) = %v: no NeedsSignIn() in the chain", err)
		}
	}
	if n := strings.Count(logs.String(), "level=ERROR msg=\"token file is damaged"); n != 1 {
		t.Errorf("ERROR lines about the damaged file after three attempts = %d, want 1:\n%s", n, logs.String())
	}
	if s := m.Status(testUser); !s.NeedsSignIn || !strings.Contains(s.LastError, "damaged") {
		t.Errorf("Status() = %+v, want NeedsSignIn with a LastError saying damaged", s)
	}
}
