package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mailproxy/oauth"
)

// The redirect URI has one story: README, docs/ENTRA.md,
// config.example.toml and the AADSTS50011 hint all name the URI the code
// sends by default (the admin page's callback on localhost), under "Mobile
// and desktop applications", never "Web".
func TestRedirectURIOneStory(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "mailproxy.toml")
	if err := os.WriteFile(cfgFile, []byte(`state_dir = "`+dir+`"
[[provider]]
name = "contoso"
type = "office365"
tenant = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000001"
[[account]]
username = "alice@contoso.com"
provider = "contoso"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(&cmdEnv{getenv: func(string) string { return "" }}, cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	want := cfg.Providers[0].RedirectURL
	if want != "http://localhost:8025/oauth2/callback" {
		t.Logf("the default redirect URL is %s", want)
	}
	texts := map[string]string{"AADSTS50011 hint": oauth.HintFor("invalid_request", 50011)}
	for _, p := range []string{"README.md", "docs/ENTRA.md", "config.example.toml"} {
		b, err := os.ReadFile(filepath.Join(repoRoot, p))
		if err != nil {
			t.Fatal(err)
		}
		texts[p] = string(b)
	}
	for where, text := range texts {
		flat := strings.Join(strings.Fields(text), " ")
		if !strings.Contains(flat, want) {
			t.Errorf("%s does not name the redirect URI the code sends, %s", where, want)
		}
		if !strings.Contains(flat, "Mobile and desktop") {
			t.Errorf("%s does not say the URI goes under Mobile and desktop applications", where)
		}
		for _, wrong := range []string{"redirect URI http://localhost (", "'Mobile and desktop applications' or 'Web'", "or Web"} {
			if strings.Contains(flat, wrong) {
				t.Errorf("%s still says %q", where, wrong)
			}
		}
	}
	if h := texts["AADSTS50011 hint"]; !strings.Contains(h, "not 'Web'") {
		t.Errorf("AADSTS50011 hint = %q, want it to rule out 'Web'", h)
	}
}
