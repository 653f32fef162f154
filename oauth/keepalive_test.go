package oauth

import (
	"slices"
	"testing"
	"time"
)

func TestKeepAlive(t *testing.T) {
	e := newEnv(t)
	m := e.manager(t, e.openStore(t, t.TempDir()))
	e.signIn(t, m, "pw")
	if gaps := m.KeepAliveGaps(); !slices.Equal(gaps, []string{testUser}) {
		t.Errorf("KeepAliveGaps before any unlock = %v, want [%s]", gaps, testUser)
	}
	src := mustOpen(t, m, testUser, "pw")
	mustToken(t, src)
	before := src.Tokens()
	if got := m.KeepAliveOnce(t.Context(), 168*time.Hour); len(got) != 0 {
		t.Errorf("KeepAliveOnce with fresh tokens refreshed %v", got)
	}
	e.clock.Advance(169 * time.Hour)
	if got := m.KeepAliveOnce(t.Context(), 168*time.Hour); !slices.Equal(got, []string{testUser}) {
		t.Fatalf("KeepAliveOnce after 169h = %v, want [%s]", got, testUser)
	}
	after := src.Tokens()
	if after.RefreshToken == before.RefreshToken || !after.Obtained.After(before.Obtained) {
		t.Errorf("keep-alive did not rotate the refresh token (obtained %v -> %v)", before.Obtained, after.Obtained)
	}
	if gaps := m.KeepAliveGaps(); len(gaps) != 0 {
		t.Errorf("KeepAliveGaps after unlock = %v", gaps)
	}
}
