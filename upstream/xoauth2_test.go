package upstream

import "testing"

func TestXOAuth2(t *testing.T) {
	tests := []struct {
		user, token, want string
	}{
		{"alice@contoso.com", "eyJ0eXAi.abc", "user=alice@contoso.com\x01auth=Bearer eyJ0eXAi.abc\x01\x01"},
		{"", "", "user=\x01auth=Bearer \x01\x01"},
	}
	for _, tt := range tests {
		got := XOAuth2(tt.user, tt.token)
		if string(got) != tt.want {
			t.Errorf("XOAuth2(%q, %q) = %q, want %q", tt.user, tt.token, got, tt.want)
		}
		if cap(got) != len(got) {
			t.Errorf("XOAuth2(%q, %q): cap %d, want exactly len %d (one allocation)", tt.user, tt.token, cap(got), len(got))
		}
	}
}
