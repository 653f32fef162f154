package main

import (
	"strings"
	"testing"
	"time"

	"mailproxy/config"
	"mailproxy/internal/testutil"
	"mailproxy/oauth"
	"mailproxy/oauth/store"
)

// checkDemoAccount runs `check -account user -password-stdin` against a
// running demo.
func checkDemoAccount(t *testing.T, dm *demo, user string, flags ...string) (int, string, string) {
	t.Helper()
	var out, errb testutil.Buffer
	env := &cmdEnv{stdin: strings.NewReader(demoPassword + "\n"), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	args := append([]string{"check", "-config", dm.cfgFile, "-account", user, "-password-stdin"}, flags...)
	code := run(t.Context(), env, args)
	return code, out.String(), errb.String()
}

// An account that sends through Graph is checked through Graph, not SMTP
// AUTH: its Graph token, and with -send-to a test message Graph accepts.
func TestCheckAccountGraph(t *testing.T) {
	dm := startTestDemo(t)
	code, out, errOut := checkDemoAccount(t, dm, demoGraphUser)
	if code != exitOK {
		t.Fatalf("check -account %s = exit %d\nstdout:\n%s\nstderr:\n%s", demoGraphUser, code, out, errOut)
	}
	wantInOutput(t, "check -account (graph)", out,
		"ok    imap "+dm.imapUp.Addr+": AUTHENTICATE XOAUTH2 as "+demoGraphUser,
		"ok    graph token for "+demoGraphUser,
		"ok    graph "+dm.graph.URL+": send as "+demoGraphUser+": not tried")
	wantInOutput(t, "check -account (graph) progress", errOut, "Microsoft Graph token (waiting up to 15s)...")
	if strings.Contains(out, "smtp ") {
		t.Errorf("check of a send_via = \"graph\" account checks SMTP AUTH:\n%s", out)
	}

	code, out, errOut = checkDemoAccount(t, dm, demoGraphUser, "-send-to", demoUser)
	if code != exitOK {
		t.Fatalf("check -account %s -send-to = exit %d\nstdout:\n%s\nstderr:\n%s", demoGraphUser, code, out, errOut)
	}
	sent := dm.graph.Sent()
	if len(sent) != 1 || len(dm.smtpUp.Messages()) != 0 {
		t.Fatalf("Graph sent %d, SMTP upstream got %d messages; want one through Graph", len(sent), len(dm.smtpUp.Messages()))
	}
	wantInOutput(t, "check -send-to (graph)", out,
		"ok    graph "+dm.graph.URL+": test message from "+demoGraphUser+" to "+demoUser+": sent; Graph said: 250 ")
}

// The admin page's test message of a Graph account goes through Graph too.
func TestSendTestGraph(t *testing.T) {
	dm := startTestDemo(t)
	if _, err := dm.d.SendTest(t.Context(), demoGraphUser, demoPassword, demoUser); err != nil {
		t.Fatalf("SendTest(%s) = %v", demoGraphUser, err)
	}
	if len(dm.graph.Sent()) != 1 || len(dm.smtpUp.Messages()) != 0 {
		t.Errorf("Graph sent %d, SMTP upstream got %d messages; want one through Graph", len(dm.graph.Sent()), len(dm.smtpUp.Messages()))
	}
}

// Each way Graph refuses gets its cause and fix.
func TestCheckAccountGraphExplainsRefusals(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dm *demo)
		wants []string
	}{
		{"no Mail.Send", func(t *testing.T, dm *demo) {
			dm.graph.FailNext(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.", 0)
		}, []string{"FAIL  graph", "upstream said: 550 5.7.1 Graph ErrorAccessDenied", "delegated Microsoft Graph permissions Mail.Send and Mail.ReadWrite",
			"mailproxy login -config " + "CFG" + " " + demoGraphUser}},
		{"send as denied", func(t *testing.T, dm *demo) {
			dm.graph.FailNext(403, "ErrorSendAsDenied", "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account.", 0)
		}, []string{"upstream said: 550 5.7.60 Graph ErrorSendAsDenied", "Add-RecipientPermission -Identity " + demoGraphUser}},
		{"unknown mailbox", func(t *testing.T, dm *demo) {
			dm.graph.FailNext(404, "ErrorInvalidUser", "The requested user '"+demoGraphUser+"' is invalid.", 0)
		}, []string{"upstream said: 550 5.1.8", "check account.mailbox", "Exchange Online licence"}},
		{"token refused", func(t *testing.T, dm *demo) { dm.graph.RefuseTokens(2) },
			[]string{"upstream said: 535 5.7.3 Graph InvalidAuthenticationToken", "grant admin consent"}},
		{"graph never consented", func(t *testing.T, dm *demo) {
			// Signed in before send_via = "graph": no Graph scopes granted.
			scopes := []string{"https://outlook.office.com/IMAP.AccessAsUser.All", "https://outlook.office.com/SMTP.Send", "offline_access", "openid"}
			now := time.Now()
			err := dm.d.Manager().Seal(demoGraphUser, demoPassword, oauth.TokenSet{RefreshToken: dm.idp.GrantRefreshToken(demoClientID, demoGraphUser, scopes), Scopes: scopes},
				store.Meta{Identity: demoGraphUser, Flow: config.FlowAuthCode, Created: now, RefreshObtained: now})
			if err != nil {
				t.Fatal(err)
			}
		}, []string{"FAIL  graph token for " + demoGraphUser, "AADSTS65001", "never consented", "grant admin consent, then sign in once more"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dm := startTestDemo(t)
			tc.setup(t, dm)
			code, out, errOut := checkDemoAccount(t, dm, demoGraphUser, "-send-to", demoUser)
			if code != exitFailure {
				t.Errorf("check -account %s = exit %d, want 1\nstdout:\n%s\nstderr:\n%s", demoGraphUser, code, out, errOut)
			}
			for i, w := range tc.wants {
				tc.wants[i] = strings.ReplaceAll(w, "CFG", dm.cfgFile)
			}
			wantInOutput(t, tc.name, out, tc.wants...)
		})
	}
}
