package main

import (
	"os"
	"strings"
	"testing"

	"mailproxy/internal/fake365"
)

func readFileString(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}

func writeFileString(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

// hasCheckLine reports whether a line of check output starts with status
// and contains what.
func hasCheckLine(out, status, what string) bool {
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, status) && strings.Contains(line, what) {
			return true
		}
	}
	return false
}

func TestCheckOK(t *testing.T) {
	e := newCLIEnv(t)
	code, out, errOut := e.runCmd(t, nil, "check", "-config", e.cfgPath)
	if code != exitOK {
		t.Errorf("check = exit %d, stderr %q, want 0\n%s", code, errOut, out)
	}
	for _, want := range []string{
		"config " + e.cfgPath,
		"state_dir",
		"provider fake token endpoint",
		"provider app token endpoint",
		"provider app app-only token (for scanner)",
		"imap " + e.imap.Addr + ": TLS ok, greeting * OK, AUTH=XOAUTH2 offered",
		"smtp " + e.smtp.Addr + ": STARTTLS ok, AUTH XOAUTH2 offered",
	} {
		if !hasCheckLine(out, "ok    ", want) {
			t.Errorf("check output lacks an ok line with %q:\n%s", want, out)
		}
	}
	// Before each check, what it waits for and how long (stderr).
	idpHost := strings.TrimPrefix(e.idp.URL, "http://")
	wantInOutput(t, "check progress", errOut,
		"Asking "+idpHost+" whether it knows the client_id of provider fake (waiting up to 15s)...\n",
		"Asking "+idpHost+" for an app token (waiting up to 15s)...\n",
		"Connecting to "+e.imap.Addr+" (IMAP, implicit TLS) (waiting up to 15s)...\n",
		"Connecting to "+e.smtp.Addr+" (SMTP) (waiting up to 15s)...\n")
	if strings.Count(out, "imap ") != 1 || strings.Count(out, "smtp ") != 1 {
		t.Errorf("check output checks a shared server twice:\n%s", out)
	}
	if strings.Contains(out, "FAIL") {
		t.Errorf("check output has failures:\n%s", out)
	}
	if got := e.idp.Stats().ClientCredentials; got != 1 {
		t.Errorf("IdP client_credentials grants = %d, want 1", got)
	}
}

func TestCheckFailures(t *testing.T) {
	e := newCLIEnv(t)
	dead := deadAddr(t)
	e.writeConfig(t, dead, e.smtp.Addr, "http://"+dead+"/token")
	code, out, errOut := e.runCmd(t, nil, "check", "-config", e.cfgPath)
	if code != exitFailure || !strings.Contains(errOut, "checks failed") {
		t.Errorf("check against a dead address = exit %d, stderr %q; want exit 1, checks failed", code, errOut)
	}
	for _, want := range []string{"imap " + dead + ": dial " + dead, "provider fake token endpoint", "provider app app-only token"} {
		if !hasCheckLine(out, "FAIL  ", want) {
			t.Errorf("check output lacks a FAIL line with %q:\n%s", want, out)
		}
	}
	if !hasCheckLine(out, "ok    ", "smtp "+e.smtp.Addr) {
		t.Errorf("check output lacks the ok line for the live SMTP server:\n%s", out)
	}
}

func TestCheckBadClient(t *testing.T) {
	e := newCLIEnv(t)
	// The app registration's secret changed at the IdP.
	e.idp.AddClient(fakeClientWithSecret(cliAppClient, "rotated"))
	code, out, _ := e.runCmd(t, nil, "check", "-config", e.cfgPath)
	if code != exitFailure || !hasCheckLine(out, "FAIL  ", "provider app token endpoint") || !strings.Contains(out, "client secret is wrong") {
		t.Errorf("check with a wrong client secret = exit %d, want 1 with a FAIL line and hint:\n%s", code, out)
	}
	if !hasCheckLine(out, "ok    ", "provider fake token endpoint") {
		t.Errorf("check output lacks the ok line of the healthy provider:\n%s", out)
	}
}

func TestCheckWrongCA(t *testing.T) {
	e := newCLIEnv(t)
	other, err := newOtherCAPEM()
	if err != nil {
		t.Fatal(err)
	}
	writeFileString(t, e.dir+"/ca.pem", other)
	code, out, _ := e.runCmd(t, nil, "check", "-config", e.cfgPath)
	if code != exitFailure || !hasCheckLine(out, "FAIL  ", "imap "+e.imap.Addr+": TLS handshake") || !hasCheckLine(out, "FAIL  ", "smtp "+e.smtp.Addr) {
		t.Errorf("check with an untrusted upstream certificate = exit %d, want 1 with TLS FAIL lines:\n%s", code, out)
	}
}

func TestCheckBadConfig(t *testing.T) {
	e := newCLIEnv(t)
	writeFileString(t, e.cfgPath, "nonsense = 1\n")
	if code, _, errOut := e.runCmd(t, nil, "check", "-config", e.cfgPath); code != exitUsage || !strings.Contains(errOut, "nonsense") {
		t.Errorf("check with a bad config = exit %d, stderr %q; want 2 naming the key", code, errOut)
	}
}

func fakeClientWithSecret(id, secret string) fake365.Client {
	return fake365.Client{ID: id, Secret: secret}
}

func newOtherCAPEM() (string, error) {
	ca, err := fake365.NewCA()
	if err != nil {
		return "", err
	}
	return string(ca.CertPEM), nil
}
