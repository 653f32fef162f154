package main

import (
	"bytes"
	"strings"
	"testing"
)

// hash-password refuses a password under ten
// characters and say why; nothing is printed on stdout.
func TestShortPasswordRefused(t *testing.T) {
	{
		args := []string{"hash-password"}
		var out, errb bytes.Buffer
		env := &cmdEnv{stdin: strings.NewReader("123456789\n"), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
		code := run(t.Context(), env, args)
		if code == exitOK || out.Len() != 0 || !strings.Contains(errb.String(), "at least 10") {
			t.Errorf("%v with a 9-character password = exit %d, stdout %q, stderr %q; want a failure naming the minimum", args, code, out.String(), errb.String())
		}
	}
	var out, errb bytes.Buffer
	env := &cmdEnv{stdin: strings.NewReader("1234567890\n"), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	if code := run(t.Context(), env, []string{"hash-password"}); code != exitOK || !strings.HasPrefix(out.String(), "$argon2id$") {
		t.Errorf("hash-password with 10 characters = exit %d, stdout %q, stderr %q; want a hash", code, out.String(), errb.String())
	}
}

// login -password-stdin checks the password before the sign-in, so that a
// short one wastes no browser round.
func TestLoginShortPasswordBeforeSignIn(t *testing.T) {
	e := newCLIEnv(t)
	code, out, errOut := e.runCmd(t, strings.NewReader("short\n"), "login", "-config", e.cfgPath, "-password-stdin", cliAlice)
	if code == exitOK || !strings.Contains(errOut, "at least 10") {
		t.Errorf("login with a short password = exit %d, stdout %q, stderr %q; want a failure naming the minimum", code, out, errOut)
	}
	if n := e.idp.Stats().AuthCodes; n != 0 {
		t.Errorf("codes redeemed = %d, want 0 (refused before the sign-in)", n)
	}
}
