package phc

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	salt := func(n int) string { return base64.RawStdEncoding.EncodeToString([]byte(strings.Repeat("s", n))) }
	key := base64.RawStdEncoding.EncodeToString([]byte(strings.Repeat("k", 32)))
	with := func(params, salt string) string { return "$argon2id$v=19$" + params + "$" + salt + "$" + key }
	tests := []struct {
		name string
		phc  string
		ok   bool
	}{
		{"as HashPassword writes it", with("m=65536,t=3,p=2", salt(16)), true},
		{"8-byte salt", with("m=64,t=1,p=1", salt(8)), true},
		{"64-byte salt", with("m=64,t=1,p=1", salt(64)), true},
		// The hash that passed the config check and then failed every login.
		{"100-byte salt", with("m=65536,t=3,p=2", salt(100)), false},
		{"7-byte salt", with("m=64,t=1,p=1", salt(7)), false},
		{"4 GiB", with("m=4194304,t=1,p=1", salt(16)), true},
		{"over 4 GiB", with("m=4194305,t=1,p=1", salt(16)), false},
		{"m below 8*p", with("m=15,t=1,p=2", salt(16)), false},
		{"t=0", with("m=64,t=0,p=1", salt(16)), false},
		{"p=65", with("m=1024,t=1,p=65", salt(16)), false},
		{"leading zero", with("m=064,t=1,p=1", salt(16)), false},
		{"argon2i", strings.Replace(with("m=64,t=1,p=1", salt(16)), "argon2id", "argon2i", 1), false},
	}
	for _, tt := range tests {
		h, err := Parse(tt.phc)
		if (err == nil) != tt.ok {
			t.Errorf("%s: Parse() = %v, want ok %v", tt.name, err, tt.ok)
			continue
		}
		if err != nil {
			if !errors.Is(err, ErrBadHash) || strings.Contains(err.Error(), key) {
				t.Errorf("%s: Parse() = %v, want ErrBadHash without the hash", tt.name, err)
			}
			continue
		}
		if len(h.Hash) != 32 || h.Time < 1 || h.Threads < 1 || len(h.Salt) < 8 {
			t.Errorf("%s: Parse() = %+v", tt.name, h)
		}
	}
}
