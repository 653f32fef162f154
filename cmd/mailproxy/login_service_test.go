package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mailproxy/oauth"
)

// seal = "service": login asks for no password; the tokens open with the
// daemon's service key, which login creates in state_dir (0600).
func TestLoginServiceSeal(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	e := newCLIEnv(t)
	const svc = "svc@contoso.com"
	f, err := os.OpenFile(e.cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("\n[[account]]\nusername = \"" + svc + "\"\nprovider = \"fake\"\nseal = \"service\"\n")
	f.Close()
	e.imap.AddMailbox(svc)
	e.idp.AddUser(svc)
	e.idp.SignInAs(svc)
	code, out, errOut := e.runCmd(t, strings.NewReader(""), "login", "-config", e.cfgPath, svc)
	if code != exitOK {
		t.Fatalf("login = exit %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "service key") {
		t.Errorf("login output = %q, want it to say the tokens are sealed with the service key", out)
	}
	keyFile := filepath.Join(e.dir, "state", oauth.ServiceKeyFile)
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("service key file: %v", err)
	}
	key, err := oauth.LoadServiceKey(filepath.Join(e.dir, "state"), false)
	if err != nil {
		t.Fatal(err)
	}
	e.imapLogin(t, svc, key.Password(svc))

	if code, _, _ := e.runCmd(t, strings.NewReader("pw\n"), "login", "-config", e.cfgPath, "-password-stdin", svc); code != exitUsage {
		t.Errorf("login -password-stdin of a service account = exit %d, want %d", code, exitUsage)
	}
}
