package main

import (
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"mailproxy/internal/fake365"
)

const cliScanner = "scanner@contoso.com" // the client_credentials account's mailbox

// checkAccount runs `check -account user` with the local password on stdin.
func (e *cliEnv) checkAccount(t *testing.T, user string, flags ...string) (int, string, string) {
	t.Helper()
	args := append([]string{"check", "-config", e.cfgPath, "-account", user, "-password-stdin"}, flags...)
	if user == "scanner" {
		args = append([]string{"check", "-config", e.cfgPath, "-account", user}, flags...)
	}
	return e.runCmd(t, strings.NewReader(cliPassword+"\n"), args...)
}

func wantInOutput(t *testing.T, what, out string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Errorf("%s: output lacks %q:\n%s", what, w, out)
		}
	}
}

func TestCheckAccountWorks(t *testing.T) {
	e := newCLIEnv(t)
	e.idp.SignInAs(cliAlice)
	e.mustLogin(t, cliAlice)
	code, out, errOut := e.checkAccount(t, cliAlice, "-send-to", cliBob)
	if code != exitOK {
		t.Fatalf("check -account %s = exit %d, want 0\nstdout:\n%s\nstderr:\n%s", cliAlice, code, out, errOut)
	}
	wantInOutput(t, "check -account", out,
		"ok    access token for "+cliAlice,
		"ok    imap "+e.imap.Addr+": AUTHENTICATE XOAUTH2 as "+cliAlice+": accepted; INBOX opened (0 messages)",
		"ok    smtp "+e.smtp.Addr+": AUTH XOAUTH2 as "+cliAlice+": 235 accepted",
		"ok    smtp "+e.smtp.Addr+": MAIL FROM:<"+cliAlice+">: accepted",
		"ok    smtp "+e.smtp.Addr+": test message to "+cliBob+": sent; upstream said: 250 ")
	wantInOutput(t, "check -account progress", errOut, "(waiting up to 15s)", "Signing in at "+e.imap.Addr)
	msgs := e.smtp.Messages()
	if len(msgs) != 1 || msgs[0].From != cliAlice || len(msgs[0].Rcpts) != 1 || msgs[0].Rcpts[0].Addr != cliBob ||
		!strings.Contains(string(msgs[0].Data), "Subject: mailproxy test message") {
		t.Fatalf("upstream accepted %+v, want one test message from %s to %s", msgs, cliAlice, cliBob)
	}
	if !strings.Contains(out, msgs[0].QueueID) {
		t.Errorf("check output does not show the upstream's reply with queue id %s:\n%s", msgs[0].QueueID, out)
	}
	// Without -send-to nothing is sent.
	if code, out, _ := e.checkAccount(t, cliAlice); code != exitOK || len(e.smtp.Messages()) != 1 || !strings.Contains(out, "no message sent") {
		t.Errorf("check -account without -send-to = exit %d, %d messages upstream; want 0 and still 1\n%s", code, len(e.smtp.Messages()), out)
	}
}

// Each Exchange-side setup error gets its cause and exact fix.
func TestCheckAccountExplainsExchangeErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		user  string
		setup func(e *cliEnv)
		flags []string
		wants []string
	}{
		{"smtp auth disabled", cliAlice, func(e *cliEnv) { e.smtp.FailAt("AUTH", fake365.SMTPAuthDisabledMailbox) }, nil,
			[]string{"FAIL  smtp", "upstream said: 535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox",
				"Set-CASMailbox -Identity " + cliAlice + " -SmtpClientAuthenticationDisabled $false", "Set-TransportConfig"}},
		{"send as denied", cliAlice, func(e *cliEnv) { e.smtp.FailAt("MAIL", fake365.SMTPSendAsDenied) }, nil,
			[]string{"upstream said: 550 5.7.60 SMTP; Client does not have permissions to send as this sender",
				"Add-RecipientPermission -Identity " + cliAlice + " -Trustee " + cliAlice + " -AccessRights SendAs"}},
		{"not connected", cliAlice, func(e *cliEnv) { e.imap.NotConnected(cliAlice, true) }, nil,
			[]string{"FAIL  imap", "upstream said: A2 BAD User is authenticated but not connected.",
				"Add-MailboxPermission -Identity " + cliAlice + " -User " + cliAlice + " -AccessRights FullAccess"}},
		{"app without service principal", "scanner", func(e *cliEnv) { e.imap.RefuseApps(cliScanner, true) }, nil,
			[]string{"FAIL  imap", "upstream said: A1 NO AUTHENTICATE failed.",
				"New-ServicePrincipal -AppId " + cliAppClient + " -ObjectId <object id of the Enterprise Application>",
				"Add-MailboxPermission -Identity " + cliScanner + " -User <the same object id> -AccessRights FullAccess",
				"Enterprise applications, not the App registration's"}},
		{"app mailbox logon failed", "scanner", func(e *cliEnv) { e.smtp.FailAt("DATA", fake365.SMTPMailboxLogonFailed) }, []string{"-send-to", cliBob},
			[]string{"FAIL  smtp", "430 4.2.0 STOREDRV; mailbox logon failure", "MapiExceptionLogonFailed",
				"New-ServicePrincipal -AppId " + cliAppClient, "-AccessRights FullAccess"}},
		{"app token refused", "scanner", func(e *cliEnv) {
			e.idp.SetFailure(&fake365.Failure{Status: 401, Code: "invalid_client", Description: "AADSTS7000215: Invalid client secret provided."})
		}, nil,
			[]string{"FAIL  access token for scanner", "AADSTS7000215", "the client secret is wrong"}},
		{"smtp token refused", cliAlice, func(e *cliEnv) {
			e.smtp.FailAt("AUTH", &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"})
		}, nil,
			[]string{"upstream said: 535 5.7.3 Authentication unsuccessful", "SMTP.Send"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newCLIEnv(t)
			e.imap.AddMailbox(cliScanner)
			if tc.user == cliAlice {
				e.idp.SignInAs(cliAlice)
				e.mustLogin(t, cliAlice)
			}
			tc.setup(e)
			code, out, errOut := e.checkAccount(t, tc.user, tc.flags...)
			if code != exitFailure {
				t.Errorf("check -account %s = exit %d, want 1\nstdout:\n%s\nstderr:\n%s", tc.user, code, out, errOut)
			}
			wantInOutput(t, tc.name, out, tc.wants...)
		})
	}
}

func TestCheckAccountUsage(t *testing.T) {
	e := newCLIEnv(t)
	for _, args := range [][]string{
		{"check", "-config", e.cfgPath, "-send-to", cliBob},
		{"check", "-config", e.cfgPath, "-account", "nobody@contoso.com"},
	} {
		if code, _, _ := e.runCmd(t, strings.NewReader(""), args...); code != exitUsage {
			t.Errorf("mailproxy %v = exit %d, want %d", args, code, exitUsage)
		}
	}
}
