package smtpclient

import "testing"

func TestPathArg(t *testing.T) {
	for in, want := range map[string]string{
		"":                                 "",
		"alice@contoso.com":                "alice@contoso.com",
		"a.b+tag@x.example":                "a.b+tag@x.example",
		"john doe@example.com":             `"john doe"@example.com`,
		"x> BODY=BINARYMIME y@contoso.com": `"x> BODY=BINARYMIME y"@contoso.com`,
		`a"b\c@x`:                          `"a\"b\\c"@x`,
		".lead@x":                          `".lead"@x`,
		"a..b@x":                           `"a..b"@x`,
		"über@bücher.example":              "über@bücher.example",
		"a@[192.0.2.1]":                    "a@[192.0.2.1]",
		"Postmaster":                       "Postmaster",
	} {
		got, err := pathArg(in)
		if err != nil || got != want {
			t.Errorf("pathArg(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"a\r\nRCPT TO:<x>@x", "a\x00@x", "a@x y", "a@x>", "a@", "@x", "nodomain", "a@[1.2.3.4", "a@x]"} {
		if got, err := pathArg(in); err == nil {
			t.Errorf("pathArg(%q) = %q, nil; want a refusal", in, got)
		}
	}
}
