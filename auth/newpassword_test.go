package auth

import (
	"strings"
	"testing"
)

func TestCheckNewPassword(t *testing.T) {
	for _, tc := range []struct {
		pw string
		ok bool
	}{
		{"", false},
		{"ab", false},
		{"123456789", false},
		{"ääääääääää", true}, // characters, not bytes
		{"1234567890", true},
		{"correct horse battery staple", true},
	} {
		err := CheckNewPassword(tc.pw)
		if (err == nil) != tc.ok {
			t.Errorf("CheckNewPassword(%q) = %v, want ok %v", tc.pw, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "at least 10") {
			t.Errorf("CheckNewPassword(%q) = %q: want the minimum named", tc.pw, err)
		}
	}
}
