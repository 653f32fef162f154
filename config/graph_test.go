package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestGraphDefaults(t *testing.T) {
	cfg := mustParse(t, provider+"[[account]]\nusername = \"a@contoso.com\"\n", "")
	p, a := cfg.Providers[0], cfg.Accounts[0]
	if p.SendVia != SendViaSMTP || a.SendVia != SendViaSMTP {
		t.Errorf("send_via = %q/%q, want smtp by default", p.SendVia, a.SendVia)
	}
	if p.Cloud != CloudGlobal || p.GraphURL != "https://graph.microsoft.com" {
		t.Errorf("cloud, graph_url = %q, %q; want global, https://graph.microsoft.com", p.Cloud, p.GraphURL)
	}
	if !p.SaveToSentItems || !a.SaveToSentItems {
		t.Errorf("save_to_sent_items = false by default, want true")
	}
	if slices.ContainsFunc(p.Scopes, func(s string) bool { return strings.Contains(s, "graph") }) {
		t.Errorf("scopes = %v: Graph scopes without an account sending through Graph", p.Scopes)
	}
	if want := []string{"https://graph.microsoft.com/.default"}; !slices.Equal(p.GraphAppScopes, want) {
		t.Errorf("GraphAppScopes = %v, want %v", p.GraphAppScopes, want)
	}
	if p.MinTokenLifetime != 0 {
		t.Errorf("MinTokenLifetime = %v for smtp.office365.com, want 0", p.MinTokenLifetime)
	}
}

func TestSendViaGraph(t *testing.T) {
	cfg := mustParse(t, provider+`send_via = "graph"
save_to_sent_items = false
[[account]]
username = "a@contoso.com"
[[account]]
username = "b@contoso.com"
send_via = "smtp"
save_to_sent_items = true
[[account]]
username = "sales"
mailbox = "sales@contoso.com"
`, "")
	p := cfg.Providers[0]
	a, b, sales := cfg.Account("a@contoso.com"), cfg.Account("b@contoso.com"), cfg.Account("sales")
	if a.SendVia != SendViaGraph || b.SendVia != SendViaSMTP || sales.SendVia != SendViaGraph {
		t.Errorf("send_via = %q, %q, %q; want graph (provider), smtp (own), graph", a.SendVia, b.SendVia, sales.SendVia)
	}
	if a.SaveToSentItems || !b.SaveToSentItems {
		t.Errorf("save_to_sent_items = %v, %v; want false (provider), true (own)", a.SaveToSentItems, b.SaveToSentItems)
	}
	for _, s := range []string{
		"https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access",
		"https://graph.microsoft.com/Mail.Send", "https://graph.microsoft.com/Mail.ReadWrite",
		"https://graph.microsoft.com/Mail.Send.Shared", "https://graph.microsoft.com/Mail.ReadWrite.Shared",
	} {
		if !slices.Contains(p.Scopes, s) {
			t.Errorf("sign-in scopes %v lack %s", p.Scopes, s)
		}
	}
	if !slices.Contains(p.GraphScopes, "https://graph.microsoft.com/Mail.Send.Shared") {
		t.Errorf("GraphScopes = %v, want the .Shared scopes for the shared mailbox", p.GraphScopes)
	}
	// The presets are not changed for other configs.
	if other := mustParse(t, provider, ""); len(other.Providers[0].Scopes) != len(presets[TypeOffice365].scopes) {
		t.Errorf("a later config's scopes = %v: the preset was modified", other.Providers[0].Scopes)
	}
}

func TestClouds(t *testing.T) {
	for _, tc := range []struct {
		cloud, auth, imap, smtp, scope, app, graph string
	}{
		{"usgov", "https://login.microsoftonline.us/contoso.onmicrosoft.com/oauth2/v2.0/authorize", "outlook.office365.us:993", "outlook.office365.us:587",
			"https://outlook.office365.us/IMAP.AccessAsUser.All", "https://outlook.office365.us/.default", "https://graph.microsoft.us"},
		{"usgovdod", "https://login.microsoftonline.us/contoso.onmicrosoft.com/oauth2/v2.0/authorize", "outlook-dod.office365.us:993", "outlook-dod.office365.us:587",
			"https://outlook-dod.office365.us/IMAP.AccessAsUser.All", "https://outlook-dod.office365.us/.default", "https://dod-graph.microsoft.us"},
		{"china", "https://login.chinacloudapi.cn/contoso.onmicrosoft.com/oauth2/v2.0/authorize", "partner.outlook.cn:993", "partner.outlook.cn:587",
			"https://partner.outlook.cn/IMAP.AccessAsUser.All", "https://partner.outlook.cn/.default", "https://microsoftgraph.chinacloudapi.cn"},
	} {
		t.Run(tc.cloud, func(t *testing.T) {
			cfg := mustParse(t, provider+"cloud = \""+tc.cloud+"\"\nsend_via = \"graph\"\n[[account]]\nusername = \"a@contoso.com\"\n", "")
			p := cfg.Providers[0]
			if p.AuthURL != tc.auth || !strings.HasPrefix(p.TokenURL, strings.TrimSuffix(tc.auth, "authorize")) {
				t.Errorf("auth_url, token_url = %q, %q; want %q and its token endpoint", p.AuthURL, p.TokenURL, tc.auth)
			}
			if p.IMAPServer != tc.imap || p.SMTPServer != tc.smtp {
				t.Errorf("imap, smtp = %q, %q; want %q, %q", p.IMAPServer, p.SMTPServer, tc.imap, tc.smtp)
			}
			if wantPOP := strings.TrimSuffix(tc.imap, ":993") + ":995"; p.POP3Server != wantPOP {
				t.Errorf("pop3_server = %q, want %q", p.POP3Server, wantPOP)
			}
			if !slices.Contains(p.Scopes, tc.scope) || !slices.Equal(p.AppScopes, []string{tc.app}) {
				t.Errorf("scopes %v, app_scopes %v; want %s and %s", p.Scopes, p.AppScopes, tc.scope, tc.app)
			}
			if p.GraphURL != tc.graph || !slices.Contains(p.Scopes, tc.graph+"/Mail.Send") || !slices.Equal(p.GraphAppScopes, []string{tc.graph + "/.default"}) {
				t.Errorf("graph_url %q, scopes %v, GraphAppScopes %v; want %s and its scopes", p.GraphURL, p.Scopes, p.GraphAppScopes, tc.graph)
			}
			if slices.ContainsFunc(p.Scopes, func(s string) bool {
				return strings.Contains(s, "outlook.office.com") || strings.Contains(s, "graph.microsoft.com")
			}) {
				t.Errorf("scopes %v name a global resource", p.Scopes)
			}
		})
	}
	// Overrides still win over the cloud.
	cfg := mustParse(t, provider+"cloud = \"usgov\"\nimap_server = \"imap.example.org:993\"\ngraph_url = \"https://graph.example.org\"\n", "")
	if p := cfg.Providers[0]; p.IMAPServer != "imap.example.org:993" || p.GraphURL != "https://graph.example.org" {
		t.Errorf("overrides = %q, %q; want them kept", p.IMAPServer, p.GraphURL)
	}
}

func TestHVEMinTokenLifetime(t *testing.T) {
	cfg := mustParse(t, provider+"smtp_server = \"smtp-hve.office365.com:587\"\n", "")
	if got := cfg.Providers[0].MinTokenLifetime; got != 15*time.Minute {
		t.Errorf("MinTokenLifetime for HVE = %v, want 15m", got)
	}
}

func TestCustomGraph(t *testing.T) {
	const custom = `
[[provider]]
name = "lab"
type = "custom"
client_id = "x"
auth_url = "http://127.0.0.1:9/authorize"
token_url = "http://127.0.0.1:9/token"
scopes = ["https://outlook.office.com/SMTP.Send", "offline_access"]
imap_server = "127.0.0.1:993"
smtp_server = "127.0.0.1:587"
send_via = "graph"
`
	cfg := mustParse(t, custom+"graph_url = \"http://127.0.0.1:8080/\"\n[[account]]\nusername = \"a@lab.test\"\n", "")
	p := cfg.Providers[0]
	if p.GraphURL != "http://127.0.0.1:8080" || !slices.Contains(p.GraphScopes, "https://graph.microsoft.com/Mail.Send") {
		t.Errorf("custom graph_url %q, GraphScopes %v", p.GraphURL, p.GraphScopes)
	}
}

func TestGraphInvalid(t *testing.T) {
	const custom = `
[[provider]]
name = "lab"
type = "custom"
client_id = "x"
auth_url = "http://127.0.0.1:9/authorize"
token_url = "http://127.0.0.1:9/token"
scopes = ["offline_access"]
imap_server = "127.0.0.1:993"
smtp_server = "127.0.0.1:587"
`
	const gmail = "[[provider]]\nname = \"g\"\ntype = \"gmail\"\nclient_id = \"x\"\n"
	for _, tc := range []struct{ name, data, key, msg string }{
		{"bad send_via", provider + "send_via = \"http\" # <-\n", "provider[0].send_via", `"smtp" or "graph"`},
		{"bad account send_via", provider + "[[account]]\nusername = \"a@contoso.com\"\nsend_via = \"imap\" # <-\n", "account[0].send_via", `"smtp" or "graph"`},
		{"bad cloud", provider + "cloud = \"mars\" # <-\n", "provider[0].cloud", "usgov"},
		{"cloud on gmail", gmail + "cloud = \"china\" # <-\n", "provider[0].cloud", "only type office365"},
		{"graph on gmail", gmail + "[[account]]\nusername = \"a@gmail.com\"\nsend_via = \"graph\" # <-\n", "account[0].send_via", "gmail"},
		{"custom without graph_url", custom + "[[account]]\nusername = \"a@lab.test\"\nsend_via = \"graph\" # <-\n", "account[0].send_via", "graph_url"},
		{"graph_url with a path", provider + "graph_url = \"https://graph.microsoft.com/v1.0\" # <-\n", "provider[0].graph_url", "without a path"},
		{"graph_url plain http", provider + "graph_url = \"http://graph.example.org\" # <-\n", "provider[0].graph_url", "https"},
		{"save_to_sent_items not bool", provider + "save_to_sent_items = \"no\" # <-\n", "provider[0].save_to_sent_items", "true or false"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.data), "")
			errs := configErrors(err)
			if len(errs) == 0 {
				t.Fatalf("Parse = nil, want an error about %s", tc.key)
			}
			found := false
			for _, e := range errs {
				if e.Key == tc.key && strings.Contains(e.Error(), tc.msg) {
					found = true
					if line := markerLine(tc.data); line != 0 && e.Line != line {
						t.Errorf("error %q on line %d, want %d", e, e.Line, line)
					}
				}
			}
			if !found {
				t.Errorf("Parse = %v; want an error for %s containing %q", err, tc.key, tc.msg)
			}
		})
	}
}
