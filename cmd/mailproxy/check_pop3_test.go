package main

import (
	"fmt"
	"path/filepath"
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
