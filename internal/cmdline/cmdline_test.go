package cmdline

import "testing"

func TestCommand(t *testing.T) {
	for _, tc := range []struct {
		inv  Invocation
		sub  string
		args []string
		want string
	}{
		{Invocation{GOOS: "linux"}, "login", []string{"alice@contoso.com"}, "mailproxy login alice@contoso.com"},
		{Invocation{GOOS: "linux", Config: "/etc/mailproxy/mailproxy.toml", DefaultConfig: "/etc/mailproxy/mailproxy.toml"},
			"login", []string{"alice@contoso.com"}, "mailproxy login alice@contoso.com"},
		{Invocation{GOOS: "linux", Config: "/etc/mailproxy//mailproxy.toml", DefaultConfig: "/etc/mailproxy/mailproxy.toml"},
			"status", nil, "mailproxy status"},
		{Invocation{GOOS: "linux", Config: "/tmp/mailproxy-demo-1/mailproxy.toml", DefaultConfig: "/etc/mailproxy/mailproxy.toml"},
			"login", []string{"scanner@contoso.com"}, "mailproxy login -config /tmp/mailproxy-demo-1/mailproxy.toml scanner@contoso.com"},
		{Invocation{GOOS: "darwin", Config: "/Users/a b/it's.toml", DefaultConfig: "/etc/mailproxy/mailproxy.toml"},
			"login", []string{"alice@contoso.com"}, `mailproxy login -config '/Users/a b/it'\''s.toml' alice@contoso.com`},
		{Invocation{GOOS: "windows", Config: `C:\ProgramData\mailproxy\mailproxy.toml`, DefaultConfig: `c:\programdata\mailproxy\mailproxy.toml`},
			"login", []string{"alice@contoso.com"}, `mailproxy.exe login alice@contoso.com`},
		{Invocation{GOOS: "windows", Config: `C:\Program Files\mailproxy\mp.toml`, DefaultConfig: `C:\ProgramData\mailproxy\mailproxy.toml`},
			"login", []string{"alice@contoso.com"}, `mailproxy.exe login -config "C:\Program Files\mailproxy\mp.toml" alice@contoso.com`},
		{Invocation{GOOS: "windows", Config: `D:\mp\mailproxy.toml`}, "check", []string{"-account", "a@b.c"},
			`mailproxy.exe check -config D:\mp\mailproxy.toml -account a@b.c`},
	} {
		if got := tc.inv.Command(tc.sub, tc.args...); got != tc.want {
			t.Errorf("%+v.Command(%q, %q) = %q, want %q", tc.inv, tc.sub, tc.args, got, tc.want)
		}
	}
}

func TestSetAndExpand(t *testing.T) {
	t.Cleanup(func() { current.Store(nil) })
	if got := Login("alice@contoso.com"); got != "mailproxy login alice@contoso.com" && got != "mailproxy.exe login alice@contoso.com" {
		t.Errorf("Login() before Set = %q, want no -config", got)
	}
	Set(Invocation{GOOS: "linux", Config: "rel/mp.toml", DefaultConfig: "/etc/mailproxy/mailproxy.toml"})
	got := Login("a@b.c")
	if want := "mailproxy login -config /"; len(got) < len(want) || got[:len(want)] != want {
		t.Errorf("Login() after Set with a relative path = %q, want an absolute -config", got)
	}
	Set(Invocation{GOOS: "linux", Config: "/srv/mp.toml", DefaultConfig: "/etc/mailproxy/mailproxy.toml"})
	hint := "the sign-in expired: run `mailproxy login <user>` (or Sign in on the admin page); <user> must sign in"
	want := "the sign-in expired: run `mailproxy login -config /srv/mp.toml a@b.c` (or Sign in on the admin page); a@b.c must sign in"
	if got := Expand(hint, "a@b.c"); got != want {
		t.Errorf("Expand() = %q, want %q", got, want)
	}
}
