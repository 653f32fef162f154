package oauth

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"mailproxy/internal/fake365"
)

var testGraphScopes = []string{"https://graph.microsoft.com/Mail.Send", "https://graph.microsoft.com/Mail.ReadWrite"}

// graphEnv is an env whose provider sends through Graph: the sign-in
// scopes hold both resources, as config builds them.
func graphEnv(t *testing.T) (*env, TokenSet) {
	e := newEnv(t)
	e.p.Scopes = append(slices.Clone(testScopes), testGraphScopes...)
	e.p.GraphScopes = testGraphScopes
	e.p.GraphAppScopes = []string{"https://graph.microsoft.com/.default"}
	rt := e.idp.GrantRefreshToken(testClient, testUser, e.p.Scopes)
	return e, TokenSet{RefreshToken: rt, Scopes: e.p.Scopes}
}

func (e *env) audience(t *testing.T, tok string) fake365.AccessToken {
	t.Helper()
	at, ok := e.idp.Inspect(tok)
	if !ok {
		t.Fatalf("IdP.Inspect(token) = not found")
	}
	return at
}

func TestGraphSourceSharesTheRefreshToken(t *testing.T) {
	e, ts := graphEnv(t)
	rec := &recorder{}
	s := e.source(t, ts, rec.persist)
	g := s.Graph()
	if s.Graph() != g {
		t.Fatal("Graph() returned another source the second time")
	}
	// Alternate refreshes: each rotates the refresh token the other would
	// send next. The fake IdP kills a rotated token at once.
	for i := range 4 {
		out := mustToken(t, s)
		if at := e.audience(t, out); at.Audience != fake365.OutlookResource {
			t.Errorf("round %d: Outlook source token for %q, want %q", i, at.Audience, fake365.OutlookResource)
		}
		gt := mustToken(t, g)
		at := e.audience(t, gt)
		if at.Audience != fake365.GraphResource || !slices.Contains(at.Scopes, "Mail.Send") || !slices.Contains(at.Scopes, "Mail.ReadWrite") {
			t.Errorf("round %d: Graph source token = %+v, want Graph audience with Mail.Send and Mail.ReadWrite", i, at)
		}
		if slices.Contains(at.Scopes, "IMAP.AccessAsUser.All") {
			t.Errorf("round %d: Graph token carries Outlook scopes %v", i, at.Scopes)
		}
		if _, err := s.Refresh(t.Context(), out); err != nil {
			t.Fatalf("round %d: Refresh(outlook) = %v", i, err)
		}
		if _, err := g.Refresh(t.Context(), gt); err != nil {
			t.Fatalf("round %d: Refresh(graph) = %v", i, err)
		}
	}
	// What was persisted last is the live refresh token: a new source
	// from it works.
	last, _ := rec.last()
	if last.RefreshToken != s.Tokens().RefreshToken {
		t.Errorf("persisted refresh token is not the current one")
	}
	s2 := e.source(t, TokenSet{RefreshToken: last.RefreshToken}, nil)
	mustToken(t, s2)
	if g.Tokens().RefreshToken != "" {
		t.Errorf("the Graph source keeps a refresh token of its own")
	}
}

func TestGraphSourceConcurrentRefreshes(t *testing.T) {
	e, ts := graphEnv(t)
	s := e.source(t, ts, (&recorder{}).persist)
	g := s.Graph()
	var wg sync.WaitGroup
	for i := range 16 {
		src := s
		if i%2 == 1 {
			src = g
		}
		wg.Go(func() {
			for range 3 {
				tok, err := src.Token(context.Background())
				if err != nil {
					t.Errorf("Token() = %v", err)
					return
				}
				if _, err := src.Refresh(context.Background(), tok); err != nil {
					t.Errorf("Refresh() = %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := e.idp.Stats().Errors; n != 0 {
		t.Errorf("the IdP answered %d errors: a rotated refresh token was sent again", n)
	}
}

func TestOneResourcePerTokenRequest(t *testing.T) {
	e, ts := graphEnv(t)
	// The IdP refuses both resources in one request...
	if _, err := e.p.refresh(t.Context(), ts.RefreshToken, e.p.Scopes); err == nil {
		t.Fatal("refresh with Outlook and Graph scopes succeeded; the fake IdP must answer AADSTS28000")
	} else if te := classify(err); te.AADSTS != 28000 {
		t.Fatalf("refresh with two resources = %v, want AADSTS28000", err)
	}
	// ...so the Outlook source asks for Outlook's alone.
	ts.RefreshToken = e.idp.GrantRefreshToken(testClient, testUser, e.p.Scopes)
	s := e.source(t, ts, nil)
	mustToken(t, s)
}

func TestGraphSourceNeedsConsent(t *testing.T) {
	e := newEnv(t)
	e.p.GraphScopes = testGraphScopes
	// Signed in before send_via = "graph": no Graph consent.
	s := e.source(t, e.seed(), nil)
	mustToken(t, s)
	_, err := s.Graph().Token(t.Context())
	te := classify(err)
	if err == nil || te.AADSTS != 65001 || !te.NeedsSignIn() {
		t.Fatalf("Graph().Token() without consent = %v, want AADSTS65001 needing a sign-in", err)
	}
	// The Outlook side goes on working.
	if _, err := s.Refresh(t.Context(), mustToken(t, s)); err != nil {
		t.Errorf("Outlook Refresh() after a failed Graph redemption = %v", err)
	}
}

func TestAppGraphSource(t *testing.T) {
	e, _ := graphEnv(t)
	a := NewAppSource(e.p, nil)
	g := a.Graph()
	at := e.audience(t, mustToken(t, g))
	if at.Audience != fake365.GraphResource || !slices.Contains(at.Roles, "Mail.Send") || !at.App {
		t.Errorf("app Graph token = %+v, want an app token for Graph with Mail.Send", at)
	}
	if o := e.audience(t, mustToken(t, a)); o.Audience == fake365.GraphResource {
		t.Errorf("the app's own source got a Graph token")
	}
}

// HVE refuses tokens about 8 minutes before they expire: with a minimum
// lifetime of 15 minutes a token goes out only with 15 minutes left.
func TestMinTokenLifetime(t *testing.T) {
	for _, tc := range []struct {
		name    string
		minLife time.Duration
		// after 6 of its 20 minutes, 14 are left: under 15, over half.
		wantNew bool
	}{
		{"HVE", 15 * time.Minute, true},
		{"none", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.idp.SetTokenLifetime(20 * time.Minute)
			e.p.MinTokenLifetime = tc.minLife
			s := e.source(t, e.seed(), nil)
			first := mustToken(t, s)
			e.clock.Advance(4 * time.Minute) // 16 minutes left
			if tok := mustToken(t, s); tok != first {
				t.Errorf("with 16 minutes left: a new token; want the current one")
			}
			e.clock.Advance(2 * time.Minute) // 14 minutes left
			tok := mustToken(t, s)
			if got := tok != first; got != tc.wantNew {
				t.Errorf("with 14 minutes left: new token = %v, want %v", got, tc.wantNew)
			}
			if left := s.Tokens().Expiry.Sub(e.clock.Now()); tc.wantNew && left < 15*time.Minute {
				t.Errorf("token handed out with %v left, want at least 15m", left)
			}
		})
	}
}

func TestMinTokenLifetimeWhileIdPDown(t *testing.T) {
	e := newEnv(t)
	e.idp.SetTokenLifetime(20 * time.Minute)
	e.p.MinTokenLifetime = 15 * time.Minute
	s := e.source(t, e.seed(), nil)
	mustToken(t, s)
	e.idp.SetFailure(&fake365.Failure{Status: 503})
	e.clock.Advance(6 * time.Minute) // 14 left: usable for IMAP, not for HVE
	if tok, err := s.Token(t.Context()); err == nil {
		t.Errorf("Token() with 14 minutes left and the IdP down = a token (%d bytes); want the error, HVE would refuse it", len(tok))
	}
	// Without the minimum the current token is served while the IdP is down.
	e2 := newEnv(t)
	e2.idp.SetTokenLifetime(20 * time.Minute)
	s2 := e2.source(t, e2.seed(), nil)
	first := mustToken(t, s2)
	e2.idp.SetFailure(&fake365.Failure{Status: 503})
	e2.clock.Advance(12 * time.Minute)
	if tok, err := s2.Token(t.Context()); err != nil || tok != first {
		t.Errorf("Token() without a minimum, IdP down, 8 minutes left = %v; want the current token", err)
	}
}

func TestGraphSourceFollowsProviderAndSignIn(t *testing.T) {
	e, ts := graphEnv(t)
	s := e.source(t, ts, nil)
	g := s.Graph()
	old := mustToken(t, g)
	e.clock.Advance(2 * time.Minute)
	if tok := mustToken(t, g); tok != old {
		t.Fatalf("with 58 minutes left: a new Graph token, want the current one")
	}
	p2 := *e.p
	p2.MinTokenLifetime = 59 * time.Minute
	s.SetProvider(&p2)
	if tok := mustToken(t, g); tok == old {
		t.Errorf("Graph source ignored the new provider's minimum lifetime")
	}
	s.SetTokens(TokenSet{RefreshToken: e.idp.GrantRefreshToken(testClient, testUser, e.p.Scopes)})
	if g.Tokens().AccessToken != "" {
		t.Errorf("after a new sign-in the Graph source kept the old access token")
	}
	mustToken(t, g)
}
