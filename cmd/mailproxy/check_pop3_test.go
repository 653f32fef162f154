package main

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"mailproxy/internal/fake365"
)

// writePOP3Config writes a config whose provider has pop3_server and whose
// [pop3] front is on.
func (e *cliEnv) writePOP3Config(t *testing.T, pop3Addr string) string {
	t.Helper()
	authURL, tokenURL, _ := e.idp.Endpoints("contoso.onmicrosoft.com")
	path := filepath.Join(e.dir, "pop3.toml")
	writeFileString(t, path, fmt.Sprintf(`state_dir = "state"

[admin]
listen = ""

[pop3]
listen = "127.0.0.1:0"

[[provider]]
name = "fake"
type = "custom"
client_id = %q
auth_url = %q
token_url = %q
scopes = ["https://outlook.office.com/POP.AccessAsUser.All", "offline_access"]
imap_server = %q
smtp_server = %q
pop3_server = %q
ca_file = "ca.pem"
`, cliClient, authURL, tokenURL, e.imap.Addr, e.smtp.Addr, pop3Addr))
	return path
}

func TestCheckPOP3(t *testing.T) {
	e := newCLIEnv(t)
	srvTLS, err := e.ca.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	pop, err := fake365.NewPOP3Upstream(e.idp, e.imap, srvTLS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pop.Close() })

	cfg := e.writePOP3Config(t, pop.Addr)
	code, out, errOut := e.runCmd(t, nil, "check", "-config", cfg)
	if code != exitOK || !hasCheckLine(out, "ok    ", "pop3 "+pop.Addr+": TLS ok, greeting +OK, SASL XOAUTH2 offered") {
		t.Errorf("check with a POP3 upstream = exit %d, stderr %q, want 0 and an ok line for pop3:\n%s", code, errOut, out)
	}

	dead := deadAddr(t)
	cfg = e.writePOP3Config(t, dead)
	code, out, _ = e.runCmd(t, nil, "check", "-config", cfg)
	if code != exitFailure || !hasCheckLine(out, "FAIL  ", "pop3 "+dead) {
		t.Errorf("check with a dead POP3 upstream = exit %d, want 1 and a FAIL line for pop3:\n%s", code, out)
	}

	// Without a [pop3] listener the POP3 server is none of check's business.
	code, out, _ = e.runCmd(t, nil, "check", "-config", e.cfgPath)
	if code != exitOK || strings.Contains(out, "pop3 ") {
		t.Errorf("check without [pop3] = exit %d, want 0 and no pop3 line:\n%s", code, out)
	}
}

// withPOP3 rewrites the CLI env's config with the POP3 front on and
// pop3Addr as every provider's pop3_server; withScope adds the POP scope to
// the delegated provider's scopes.
func (e *cliEnv) withPOP3(t *testing.T, pop3Addr string, withScope bool) {
	t.Helper()
	text, err := readFileString(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	text = strings.Replace(text, "[[provider]]", "[pop3]\nlisten = \"127.0.0.1:0\"\n\n[[provider]]", 1)
	text = regexp.MustCompile(`(?m)^smtp_server = .*$`).ReplaceAllString(text, "$0\npop3_server = \""+pop3Addr+"\"")
	if withScope {
		text = strings.Replace(text, `"https://outlook.office.com/SMTP.Send", `, `"https://outlook.office.com/SMTP.Send", "`+fake365.POPScope+`", `, 1)
	}
	writeFileString(t, e.cfgPath, text)
}

func TestCheckAccountPOP3(t *testing.T) {
	e := newCLIEnv(t)
	srvTLS, err := e.ca.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	pop, err := fake365.NewPOP3Upstream(e.idp, e.imap, srvTLS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pop.Close() })
	e.idp.SignInAs(cliAlice)

	// Signed in without the POP scope: POP3 refuses, and check says why.
	e.withPOP3(t, pop.Addr, false)
	e.mustLogin(t, cliAlice)
	code, out, _ := e.checkAccount(t, cliAlice)
	if code != exitFailure {
		t.Errorf("check -account without the POP scope = exit %d, want 1\n%s", code, out)
	}
	wantInOutput(t, "check -account without the POP scope", out,
		"FAIL  pop3 "+pop.Addr+": AUTH XOAUTH2 as "+cliAlice,
		"upstream said: -ERR Authentication failure",
		"mailproxy login "+cliAlice, "-PopEnabled $true")

	// A new sign-in with the POP scope fixes it.
	newCLIConfig := func() { e.writeConfig(t, e.imap.Addr, e.smtp.Addr, ""); e.withPOP3(t, pop.Addr, true) }
	newCLIConfig()
	e.mustLogin(t, cliAlice)
	code, out, _ = e.checkAccount(t, cliAlice)
	if code != exitOK {
		t.Errorf("check -account with the POP scope = exit %d, want 0\n%s", code, out)
	}
	wantInOutput(t, "check -account with the POP scope", out,
		"ok    pop3 "+pop.Addr+": AUTH XOAUTH2 as "+cliAlice+": accepted; STAT: 0 messages")
}
