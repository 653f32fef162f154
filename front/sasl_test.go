package front

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
)

// loginStep is one exchange with a SASL server: what the client sends and
// what the server must answer.
type loginStep struct {
	resp      []byte // nil: no initial response
	challenge string
	done      bool
	err       bool
}

func TestLoginServer(t *testing.T) {
	errDenied := errors.New("denied")
	tests := []struct {
		name     string
		steps    []loginStep
		wantUser string
		wantPass string
		checked  bool
	}{
		{
			name: "no initial response",
			steps: []loginStep{
				{resp: nil, challenge: "Username:"},
				{resp: []byte("alice"), challenge: "Password:"},
				{resp: []byte("secret"), done: true},
			},
			wantUser: "alice", wantPass: "secret", checked: true,
		},
		{
			name: "initial response is the username",
			steps: []loginStep{
				{resp: []byte("alice"), challenge: "Password:"},
				{resp: []byte("secret"), done: true},
			},
			wantUser: "alice", wantPass: "secret", checked: true,
		},
		{
			name: "empty initial response counts as none",
			steps: []loginStep{
				{resp: []byte{}, challenge: "Username:"},
				{resp: []byte("bob"), challenge: "Password:"},
				{resp: []byte("pw with spaces"), done: true},
			},
			wantUser: "bob", wantPass: "pw with spaces", checked: true,
		},
		{
			name: "empty password",
			steps: []loginStep{
				{resp: []byte("alice"), challenge: "Password:"},
				{resp: []byte{}, done: true},
			},
			wantUser: "alice", wantPass: "", checked: true,
		},
		{
			name: "check refuses",
			steps: []loginStep{
				{resp: []byte("mallory"), challenge: "Password:"},
				{resp: []byte("guess"), done: true, err: true},
			},
			wantUser: "mallory", wantPass: "guess", checked: true,
		},
		{
			name: "response after done",
			steps: []loginStep{
				{resp: []byte("alice"), challenge: "Password:"},
				{resp: []byte("secret"), done: true},
				{resp: []byte("more"), done: true, err: true},
			},
			wantUser: "alice", wantPass: "secret", checked: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var gotUser, gotPass string
			calls := 0
			s := NewLoginServer(func(u, p string) error {
				calls++
				gotUser, gotPass = u, p
				if u == "mallory" {
					return errDenied
				}
				return nil
			})
			for i, st := range tt.steps {
				ch, done, err := s.Next(st.resp)
				if string(ch) != st.challenge || done != st.done || (err != nil) != st.err {
					t.Fatalf("step %d: Next(%q) = %q, %v, %v, want %q, %v, error %v",
						i, st.resp, ch, done, err, st.challenge, st.done, st.err)
				}
			}
			if calls != 1 {
				t.Fatalf("check called %d times, want 1", calls)
			}
			if gotUser != tt.wantUser || gotPass != tt.wantPass {
				t.Errorf("check(%q, %q), want check(%q, %q)", gotUser, gotPass, tt.wantUser, tt.wantPass)
			}
		})
	}
}

func TestLoginServerReturnsCheckError(t *testing.T) {
	errDenied := errors.New("denied")
	s := NewLoginServer(func(u, p string) error { return errDenied })
	s.Next([]byte("alice"))
	if _, _, err := s.Next([]byte("pw")); !errors.Is(err, errDenied) {
		t.Errorf("Next(password) error = %v, want %v", err, errDenied)
	}
}

// runSASL drives client against server the way a protocol front does.
func runSASL(t *testing.T, c sasl.Client, s sasl.Server) error {
	t.Helper()
	_, ir, err := c.Start()
	if err != nil {
		t.Fatalf("client Start: %v", err)
	}
	resp := ir
	for i := 0; i < 10; i++ {
		ch, done, err := s.Next(resp)
		if err != nil || done {
			return err
		}
		if resp, err = c.Next(ch); err != nil {
			t.Fatalf("client Next(%q): %v", ch, err)
		}
	}
	t.Fatalf("SASL exchange did not finish in 10 steps")
	return nil
}

func TestLoginServerWithGoSASLClient(t *testing.T) {
	var gotUser, gotPass string
	s := NewLoginServer(func(u, p string) error { gotUser, gotPass = u, p; return nil })
	if err := runSASL(t, sasl.NewLoginClient("alice@contoso.com", "pa:ss word"), s); err != nil {
		t.Fatalf("LOGIN exchange: %v", err)
	}
	if gotUser != "alice@contoso.com" || gotPass != "pa:ss word" {
		t.Errorf("check(%q, %q), want check(%q, %q)", gotUser, gotPass, "alice@contoso.com", "pa:ss word")
	}
}

func TestParsePlain(t *testing.T) {
	tests := []struct {
		in                     string
		identity, user, passwd string
		wantErr                bool
	}{
		{in: "\x00alice\x00secret", user: "alice", passwd: "secret"},
		{in: "alice\x00alice\x00secret", identity: "alice", user: "alice", passwd: "secret"},
		{in: "Alice@X\x00alice@x\x00secret", identity: "Alice@X", user: "alice@x", passwd: "secret"},
		{in: "\x00alice\x00", user: "alice", passwd: ""},
		{in: "\x00\x00", user: "", passwd: ""},
		{in: "\x00alice\x00pass word\xff", user: "alice", passwd: "pass word\xff"},
		{in: "bob\x00alice\x00secret", wantErr: true},
		{in: "alice\x00secret", wantErr: true},
		{in: "", wantErr: true},
		{in: "\x00alice\x00sec\x00ret", wantErr: true},
		{in: "\x00\x00\x00", wantErr: true},
	}
	for _, tt := range tests {
		id, u, p, err := ParsePlain([]byte(tt.in))
		if tt.wantErr {
			if err == nil {
				t.Errorf("ParsePlain(%q) = %q, %q, %q, nil, want an error", tt.in, id, u, p)
			}
			continue
		}
		if err != nil || id != tt.identity || u != tt.user || p != tt.passwd {
			t.Errorf("ParsePlain(%q) = %q, %q, %q, %v, want %q, %q, %q, nil", tt.in, id, u, p, err, tt.identity, tt.user, tt.passwd)
		}
	}
}

func TestParsePlainErrorHidesPassword(t *testing.T) {
	for _, in := range []string{"x\x00alice\x00hunter2", "\x00alice\x00hun\x00ter2"} {
		_, _, _, err := ParsePlain([]byte(in))
		if err == nil || strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "hun") {
			t.Errorf("ParsePlain(%q) error = %v, want an error that does not quote the password", in, err)
		}
	}
}

func FuzzParsePlain(f *testing.F) {
	for _, s := range []string{
		"\x00alice\x00secret", "alice\x00alice\x00secret", "ALICE\x00alice\x00s", "bob\x00alice\x00secret",
		"", "\x00", "\x00\x00", "\x00\x00\x00", "a\x00b", "\xff\x00\xfe\x00\xfd", "é\x00É\x00pw",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		id, u, p, err := ParsePlain(in)
		if err != nil {
			if id != "" || u != "" || p != "" {
				t.Fatalf("ParsePlain(%q) = %q, %q, %q, %v: values returned with an error", in, id, u, p, err)
			}
			return
		}
		// Round trip: the fields put back together are the input.
		if back := id + "\x00" + u + "\x00" + p; back != string(in) {
			t.Fatalf("ParsePlain(%q) = %q, %q, %q; joined %q, want the input", in, id, u, p, back)
		}
		if id != "" && !strings.EqualFold(id, u) {
			t.Fatalf("ParsePlain(%q) = identity %q for username %q, want an error", in, id, u)
		}
		// go-sasl's PLAIN server must see the same three fields.
		var sid, su, sp string
		s := sasl.NewPlainServer(func(i, u, p string) error { sid, su, sp = i, u, p; return nil })
		if _, done, err := s.Next(in); !done || err != nil {
			t.Fatalf("sasl PlainServer.Next(%q) = %v, %v, want true, nil", in, done, err)
		}
		if sid != id || su != u || sp != p {
			t.Fatalf("ParsePlain(%q) = %q, %q, %q; go-sasl saw %q, %q, %q", in, id, u, p, sid, su, sp)
		}
	})
}

func FuzzLoginServer(f *testing.F) {
	f.Add([]byte("alice"), true, []byte("alice"), []byte("secret"), []byte("extra"))
	f.Add([]byte(nil), false, []byte("bob@x"), []byte("pw"), []byte(nil))
	f.Add([]byte{}, true, []byte{}, []byte{}, []byte{})
	f.Add([]byte("\x00\xff"), true, []byte("\r\n"), []byte("\x00"), []byte("*"))
	f.Fuzz(func(t *testing.T, ir []byte, withIR bool, user, pass, extra []byte) {
		var gotUser, gotPass string
		calls := 0
		s := NewLoginServer(func(u, p string) error {
			calls++
			gotUser, gotPass = u, p
			if u == p {
				return errors.New("refused")
			}
			return nil
		})
		var first []byte
		if withIR {
			first = ir
		}
		ch, done, err := s.Next(first)
		if done || err != nil {
			t.Fatalf("Next(%q) = %q, %v, %v, want a challenge", first, ch, done, err)
		}
		wantUser := string(first)
		if len(first) == 0 {
			if !bytes.Equal(ch, loginUsernameChallenge) {
				t.Fatalf("Next(%q) = %q, want %q", first, ch, loginUsernameChallenge)
			}
			if ch, done, err = s.Next(user); done || err != nil || !bytes.Equal(ch, loginPasswordChallenge) {
				t.Fatalf("Next(username %q) = %q, %v, %v, want %q", user, ch, done, err, loginPasswordChallenge)
			}
			wantUser = string(user)
		} else if !bytes.Equal(ch, loginPasswordChallenge) {
			t.Fatalf("Next(%q) = %q, want %q", first, ch, loginPasswordChallenge)
		}
		ch, done, err = s.Next(pass)
		if !done || ch != nil || (err != nil) != (wantUser == string(pass)) {
			t.Fatalf("Next(password) = %q, %v, %v", ch, done, err)
		}
		if calls != 1 || gotUser != wantUser || gotPass != string(pass) {
			t.Fatalf("check called %d times with (%q, %q), want once with (%q, %q)", calls, gotUser, gotPass, wantUser, pass)
		}
		if _, done, err := s.Next(extra); !done || err == nil {
			t.Fatalf("Next after done = %v, %v, want true, an error", done, err)
		}
		if calls != 1 {
			t.Fatalf("check called %d times, want 1", calls)
		}
	})
}
