package auth

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

// cheapArgon keeps tests fast; VerifyPassword takes any sane parameters.
var cheapArgon = argonParams{time: 1, memory: 64, threads: 1, keyLen: 32, saltLen: 16}

func cheapHash(t testing.TB, password string) string {
	t.Helper()
	h, err := hashPassword(password, cheapArgon)
	if err != nil {
		t.Fatalf("hashPassword(%q): %v", password, err)
	}
	return h
}

func TestHashPassword(t *testing.T) {
	t.Parallel() // the default parameters are slow under -race
	h, err := HashPassword("correct horse")
	if err != nil {
		t.Fatalf("HashPassword: %v", err)
	}
	re := regexp.MustCompile(`^\$argon2id\$v=19\$m=65536,t=3,p=2\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$`)
	if !re.MatchString(h) {
		t.Errorf("HashPassword(correct horse) = %q, want match for %s", h, re)
	}
	for _, tt := range []struct {
		pw   string
		want bool
	}{{"correct horse", true}, {"correct horsE", false}} {
		if ok, err := VerifyPassword(h, tt.pw); ok != tt.want || err != nil {
			t.Errorf("VerifyPassword(HashPassword(correct horse), %q) = %v, %v, want %v, nil", tt.pw, ok, err, tt.want)
		}
	}
	if _, err := HashPassword(""); err == nil {
		t.Errorf("HashPassword(\"\") succeeded, want an error")
	}
}

func TestHashPasswordSalted(t *testing.T) {
	a, b := cheapHash(t, "same"), cheapHash(t, "same")
	if a == b {
		t.Errorf("two hashes of the same password are equal (%q): want a random salt", a)
	}
}

func TestVerifyPasswordKnownAnswer(t *testing.T) {
	t.Parallel()
	// Test vector from the Argon2 reference implementation (test.c,
	// Argon2id, v=19, t=2, m=2^16, p=1, "password", "somesalt").
	const phc = "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc"
	for _, tt := range []struct {
		pw   string
		want bool
	}{{"password", true}, {"Password", false}} {
		if ok, err := VerifyPassword(phc, tt.pw); ok != tt.want || err != nil {
			t.Errorf("VerifyPassword(reference vector, %q) = %v, %v, want %v, nil", tt.pw, ok, err, tt.want)
		}
	}
}

func TestVerifyPassword(t *testing.T) {
	h := cheapHash(t, "pässwörd 🔑")
	tests := []struct {
		pw   string
		want bool
	}{
		{"pässwörd 🔑", true},
		{"pässwörd", false},
		{"", false},
		{"pässwörd 🔑 ", false},
	}
	for _, tt := range tests {
		if ok, err := VerifyPassword(h, tt.pw); ok != tt.want || err != nil {
			t.Errorf("VerifyPassword(%q, %q) = %v, %v, want %v, nil", h, tt.pw, ok, err, tt.want)
		}
	}
}

func TestVerifyPasswordMalformed(t *testing.T) {
	good := cheapHash(t, "pw")
	f := strings.Split(good, "$")
	salt, hash := f[4], f[5]
	with := func(params string) string { return "$argon2id$v=19$" + params + "$" + salt + "$" + hash }
	tests := []struct{ name, phc string }{
		{"empty", ""},
		{"bcrypt", "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"},
		{"argon2i", "$argon2i$v=19$m=64,t=1,p=1$" + salt + "$" + hash},
		{"argon2d", "$argon2d$v=19$m=64,t=1,p=1$" + salt + "$" + hash},
		{"old version", "$argon2id$v=16$m=64,t=1,p=1$" + salt + "$" + hash},
		{"no version", "$argon2id$m=64,t=1,p=1$" + salt + "$" + hash},
		{"params out of order", with("t=1,m=64,p=1")},
		{"missing param", with("m=64,t=1")},
		{"extra param", with("m=64,t=1,p=1,k=2")},
		{"memory too big", with("m=4194305,t=1,p=1")},
		{"memory below 8p", with("m=15,t=1,p=2")},
		{"memory overflow", with("m=99999999999,t=1,p=1")},
		{"zero time", with("m=64,t=0,p=1")},
		{"huge time", with("m=64,t=65,p=1")},
		{"zero threads", with("m=64,t=1,p=0")},
		{"too many threads", with("m=4096,t=1,p=65")},
		{"negative", with("m=-64,t=1,p=1")},
		{"leading zero", with("m=064,t=1,p=1")},
		{"plus sign", with("m=+64,t=1,p=1")},
		{"space", with("m=64, t=1,p=1")},
		{"padded salt", "$argon2id$v=19$m=64,t=1,p=1$" + salt + "==$" + hash},
		{"short salt", "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$" + hash},
		{"100-byte salt (config's check refuses it too)", "$argon2id$v=19$m=64,t=1,p=1$" + strings.Repeat("c2Fs", 33) + "cw$" + hash},
		{"bad salt", "$argon2id$v=19$m=64,t=1,p=1$!!!!$" + hash},
		{"short hash", "$argon2id$v=19$m=64,t=1,p=1$" + salt + "$c2hvcnQ"},
		{"long hash", "$argon2id$v=19$m=64,t=1,p=1$" + salt + "$" + strings.Repeat("A", 100)},
		{"no leading $", strings.TrimPrefix(good, "$")},
		{"trailing $", good + "$"},
	}
	for _, tt := range tests {
		ok, err := VerifyPassword(tt.phc, "pw")
		if ok || !errors.Is(err, errBadHash) {
			t.Errorf("%s: VerifyPassword(%q, pw) = %v, %v, want false, %v", tt.name, tt.phc, ok, err, errBadHash)
		}
		if err != nil && strings.Contains(err.Error(), hash) {
			t.Errorf("%s: VerifyPassword error %q quotes the hash", tt.name, err)
		}
	}
	if ok, err := VerifyPassword(good, "pw"); !ok || err != nil {
		t.Errorf("VerifyPassword(good, pw) = %v, %v, want true, nil", ok, err)
	}
}

func BenchmarkVerifyPasswordCold(b *testing.B) {
	h, err := HashPassword("benchmark password")
	if err != nil {
		b.Fatalf("HashPassword: %v", err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if ok, err := VerifyPassword(h, "benchmark password"); !ok || err != nil {
			b.Fatalf("VerifyPassword = %v, %v", ok, err)
		}
	}
}
