package oauth

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"golang.org/x/oauth2"
)

func TestHintFor(t *testing.T) {
	want := map[int]string{
		70008:   "mailproxy login",
		700082:  "mailproxy login",
		50173:   "mailproxy login",
		65001:   "consent",
		50076:   "interactive sign-in",
		7000215: "Value, not its Secret ID",
		70043:   "sign-in frequency",
		50011:   "http://localhost:8025/oauth2/callback",
		7000112: "disabled",
		50105:   "not assigned",
		700016:  "client_id",
		900144:  "parameter",
		9002313: "malformed",
	}
	for code, sub := range want {
		if h := HintFor("", code); !strings.Contains(h, sub) {
			t.Errorf("HintFor(\"\", %d) = %q, want it to contain %q", code, h, sub)
		}
	}
	for _, code := range []string{"invalid_client", "invalid_grant", "interaction_required", "unauthorized_client"} {
		if h := HintFor(code, 0); h == "" {
			t.Errorf("HintFor(%q, 0) = \"\", want a hint", code)
		}
	}
	if h := HintFor("invalid_grant", 65001); !strings.Contains(h, "consent") {
		t.Errorf("HintFor(invalid_grant, 65001) = %q; the AADSTS number should win", h)
	}
	if h := HintFor("nonsense", 1); h != "" {
		t.Errorf("HintFor(nonsense, 1) = %q, want \"\"", h)
	}
}

func TestParseDescription(t *testing.T) {
	tests := []struct {
		in    string
		first string
		code  int
	}{
		{"AADSTS70008: The provided grant has expired.\r\nTrace ID: x\r\nCorrelation ID: y", "AADSTS70008: The provided grant has expired.", 70008},
		{"AADSTS7000215: Invalid client secret provided.", "AADSTS7000215: Invalid client secret provided.", 7000215},
		{"no code here", "no code here", 0},
		{"AADSTSxyz", "AADSTSxyz", 0},
		{"", "", 0},
	}
	for _, tt := range tests {
		first, code := parseDescription(tt.in)
		if first != tt.first || code != tt.code {
			t.Errorf("parseDescription(%q) = %q, %d; want %q, %d", tt.in, first, code, tt.first, tt.code)
		}
	}
}

// TestClassifyNonEntra uses a token endpoint that is not Entra: no AADSTS in
// the description, error_codes absent, or no JSON at all.
func TestClassifyNonEntra(t *testing.T) {
	tests := []struct {
		name        string
		status      int
		ctype, body string
		want        TokenError
		signIn      bool
		temporary   bool
	}{
		{"google invalid_grant", 400, "application/json", `{"error":"invalid_grant","error_description":"Token has been expired or revoked."}`,
			TokenError{Code: "invalid_grant", Status: 400, Description: "Token has been expired or revoked."}, true, false},
		{"error_codes only", 400, "application/json", `{"error":"invalid_grant","error_description":"x","error_codes":[50173]}`,
			TokenError{Code: "invalid_grant", Status: 400, AADSTS: 50173, Description: "x"}, true, false},
		{"html 502", 502, "text/html", `<html>bad gateway, secret-looking body</html>`,
			TokenError{Status: 502}, false, true},
		{"throttled", 429, "application/json", `{"error":"temporarily_unavailable"}`,
			TokenError{Code: "temporarily_unavailable", Status: 429}, false, true},
		{"consent", 400, "application/json", `{"error":"interaction_required","error_description":"AADSTS65001: The user or administrator has not consented."}`,
			TokenError{Code: "interaction_required", Status: 400, AADSTS: 65001, Description: "AADSTS65001: The user or administrator has not consented."}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.ctype)
				w.WriteHeader(tt.status)
				w.Write([]byte(tt.body))
			}))
			defer srv.Close()
			p := &Provider{ClientID: "c", TokenURL: srv.URL, HTTPClient: srv.Client()}
			_, err := p.refresh(t.Context(), "rt", p.Scopes)
			te := classify(err)
			if te.Code != tt.want.Code || te.Status != tt.want.Status || te.AADSTS != tt.want.AADSTS || te.Description != tt.want.Description {
				t.Errorf("classify() = %+v, want %+v", te, tt.want)
			}
			if te.NeedsSignIn() != tt.signIn || te.Temporary() != tt.temporary {
				t.Errorf("NeedsSignIn, Temporary = %v, %v; want %v, %v", te.NeedsSignIn(), te.Temporary(), tt.signIn, tt.temporary)
			}
			if strings.Contains(te.Error(), "secret-looking") || strings.Contains(te.Err.Error(), "secret-looking") {
				t.Errorf("error text %q / %q quotes the response body", te.Error(), te.Err)
			}
		})
	}
}

func TestClassifyNetwork(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens there now
	p := &Provider{ClientID: "c", TokenURL: url}
	_, err := p.refresh(t.Context(), "rt", p.Scopes)
	te := classify(err)
	if !te.Temporary() || te.NeedsSignIn() || te.Hint() == "" {
		t.Errorf("classify(connection refused) = %+v; want Temporary with a hint", te)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = p.refresh(ctx, "rt", p.Scopes)
	if te := classify(err); !te.Temporary() || !errors.Is(te, context.Canceled) {
		t.Errorf("classify(canceled) = %+v; want Temporary wrapping context.Canceled", te)
	}
}

func TestTokenErrorText(t *testing.T) {
	te := &TokenError{Code: "invalid_grant", AADSTS: 70043, Description: "AADSTS70043: long text", Status: 400}
	if got, want := te.Error(), "token endpoint: invalid_grant (AADSTS70043)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	te = &TokenError{Status: 503}
	if got, want := te.Error(), "token endpoint: HTTP 503"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	// The proxy's classifier looks for these methods.
	var _ interface {
		NeedsSignIn() bool
		Temporary() bool
		Hint() string
	} = te
	var rerr error = &oauth2.RetrieveError{ErrorCode: "invalid_client", ErrorDescription: "AADSTS7000215: Invalid client secret provided."}
	if got := classify(rerr); got.AADSTS != 7000215 || got.Code != "invalid_client" {
		t.Errorf("classify(RetrieveError) = %+v", got)
	}
}

func jwt(payload string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc([]byte(payload)) + ".c2ln"
}

func TestIdentityFromIDToken(t *testing.T) {
	tests := []struct{ tok, want string }{
		{jwt(`{"preferred_username":"alice@contoso.com","upn":"u@x","email":"e@x"}`), "alice@contoso.com"},
		{jwt(`{"upn":"bob@contoso.com","email":"e@x"}`), "bob@contoso.com"},
		{jwt(`{"email":"carol@gmail.com"}`), "carol@gmail.com"},
		{jwt(`{"name":"No One"}`), ""},
		{"not-a-jwt", ""},
		{"a.!!!.c", ""},
		{"a." + base64.RawURLEncoding.EncodeToString([]byte("not json")) + ".c", ""},
		{"", ""},
	}
	for _, tt := range tests {
		if got := IdentityFromIDToken(tt.tok); got != tt.want {
			t.Errorf("IdentityFromIDToken(%.30q...) = %q, want %q", tt.tok, got, tt.want)
		}
	}
}
