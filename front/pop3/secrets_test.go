package pop3

import (
	"context"
	"strings"
	"testing"
)

// TestNoSecretsInLogs runs every login form, a refused one and a token
// refusal with the log at debug level, then looks for the passwords and
// the access tokens in the log and for the tokens in what the client got.
func TestNoSecretsInLogs(t *testing.T) {
	e := newEnv(t)
	var client strings.Builder
	c := greet(t, e.addr)
	c.login(alice, alicePass)
	c.cmd("QUIT")
	c = greet(t, e.addr)
	client.WriteString(c.cmd("AUTH PLAIN " + b64("\x00"+bob+"\x00"+bobPass)))
	c.cmd("QUIT")
	c = greet(t, e.addr)
	c.cmd("USER " + alice)
	client.WriteString(c.cmd("PASS not-" + alicePass))
	e.idp.ExpireAccessTokens() // the next login's token is refused once, then refreshed
	c = greet(t, e.addr)
	c.send("AUTH LOGIN\r\n")
	c.expect("+ ")
	c.send(b64(alice) + "\r\n")
	c.expect("+ ")
	client.WriteString(c.cmd(b64(alicePass)))

	logs := e.logs.String()
	for _, secret := range []string{alicePass, bobPass, b64(alicePass), b64("\x00" + bob + "\x00" + bobPass)} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log holds the secret %q:\n%s", secret, logs)
		}
	}
	for _, user := range []string{alice, bob} {
		tok, err := e.tokens[user].Token(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for what, text := range map[string]string{"the log": logs, "the client": client.String()} {
			if strings.Contains(text, tok) || strings.Contains(text, tok[:40]) {
				t.Errorf("%s holds %s's access token", what, user)
			}
		}
	}
	if e.pop.AuthFailures() != 1 {
		t.Errorf("upstream AuthFailures = %d, want 1 (the expired token)", e.pop.AuthFailures())
	}
}
