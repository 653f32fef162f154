package auth

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"

	phcpkg "mailproxy/auth/phc"

	"golang.org/x/crypto/argon2"
)

// argonParams are Argon2id cost parameters.
type argonParams struct {
	time    uint32 // passes over memory
	memory  uint32 // KiB
	threads uint8
	keyLen  uint32 // bytes of hash
	saltLen int    // bytes of salt
}

// defaultArgon is what HashPassword uses (RFC 9106's second recommended
// option, with 2 lanes): about 0.1 s and 64 MiB per check on a small
// server, paid once per process and account thanks to the login cache.
var defaultArgon = argonParams{time: 3, memory: 64 * 1024, threads: 2, keyLen: 32, saltLen: 16}

// errBadHash is wrapped by every VerifyPassword error about the hash text.
// The messages never quote the hash or the password.
var errBadHash = phcpkg.ErrBadHash

var b64 = base64.RawStdEncoding

// HashPassword returns the Argon2id hash of password in PHC string format,
// "$argon2id$v=19$m=65536,t=3,p=2$SALT$HASH" with SALT and HASH in
// unpadded standard base64. The salt is 16 random bytes. An empty password
// is refused.
func HashPassword(password string) (string, error) {
	return hashPassword(password, defaultArgon)
}

func hashPassword(password string, p argonParams) (string, error) {
	if password == "" {
		return "", errors.New("hash password: empty password")
	}
	salt := make([]byte, p.saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("hash password: read random salt: %w", err)
	}
	key := argon2.IDKey([]byte(password), salt, p.time, p.memory, p.threads, p.keyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, p.memory, p.time, p.threads, b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// VerifyPassword reports whether password matches phc, an Argon2id hash in
// PHC string format as HashPassword writes it (any parameters within the
// bounds of auth/phc, the one parser: config validation uses it too). The
// comparison is constant time. An error means phc is malformed or out of
// bounds; the result is then false.
func VerifyPassword(phc, password string) (bool, error) {
	p, err := phcpkg.Parse(phc)
	if err != nil {
		return false, err
	}
	got := argon2.IDKey([]byte(password), p.Salt, p.Time, p.Memory, p.Threads, uint32(len(p.Hash)))
	want := p.Hash
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}
