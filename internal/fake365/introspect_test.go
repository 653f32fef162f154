package fake365_test

import (
	"net/http"
	"net/url"
	"testing"
	"time"
)

func TestIdPIntrospection(t *testing.T) {
	h := newIdPHarness(t)
	tok := h.signIn(h.public)
	u := h.idp.IntrospectionURL(idpTestTenant)

	status, ans, _ := h.post(u, url.Values{"token": {tok.AccessToken}})
	if status != http.StatusOK {
		t.Fatalf("introspect(live token) status = %d, want 200", status)
	}
	if ans["active"] != true || ans["username"] != idpTestUser || ans["email"] != idpTestUser || ans["client_id"] != idpTestPublic {
		t.Errorf("introspect(live token) = %v, want active for %s from %s", ans, idpTestUser, idpTestPublic)
	}
	if exp, _ := ans["exp"].(float64); time.Unix(int64(exp), 0).Before(time.Now()) {
		t.Errorf("introspect(live token) exp = %v, want in the future", ans["exp"])
	}

	for name, token := range map[string]string{"unknown": "not-a-token", "modified": tok.AccessToken + "x"} {
		status, ans, _ := h.post(u, url.Values{"token": {token}})
		if status != http.StatusOK || ans["active"] != false || len(ans) != 1 {
			t.Errorf("introspect(%s token) = %d %v, want 200 {active: false}", name, status, ans)
		}
	}
	h.idp.ExpireAccessTokens()
	if _, ans, _ := h.post(u, url.Values{"token": {tok.AccessToken}}); ans["active"] != false {
		t.Errorf("introspect(expired token) = %v, want inactive", ans)
	}
	if status, _, _ := h.post(u, url.Values{}); status != http.StatusBadRequest {
		t.Errorf("introspect(no token) status = %d, want 400", status)
	}
}
