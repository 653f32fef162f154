package auth

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

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

// Bounds on the parameters VerifyPassword accepts, so that a hand-edited
// hash cannot make every login take minutes or exhaust memory.
const (
	argonMaxMemory  = 4 << 20 // KiB: 4 GiB
	argonMaxTime    = 64
	argonMaxThreads = 64
	argonMinSalt    = 8
	argonMaxSalt    = 64
	argonMinKey     = 16
	argonMaxKey     = 64
)

// errBadHash is wrapped by every VerifyPassword error about the hash text.
// The messages never quote the hash or the password.
var errBadHash = errors.New("malformed password hash")

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
// PHC string format as HashPassword writes it (any parameters within sane
// bounds: memory up to 4 GiB, time up to 64, up to 64 lanes). The
// comparison is constant time. An error means phc is malformed or out of
// bounds; the result is then false.
func VerifyPassword(phc, password string) (bool, error) {
	p, salt, want, err := parsePHC(phc)
	if err != nil {
		return false, err
	}
	got := argon2.IDKey([]byte(password), salt, p.time, p.memory, p.threads, p.keyLen)
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// parsePHC parses "$argon2id$v=19$m=M,t=T,p=P$SALT$HASH".
func parsePHC(phc string) (p argonParams, salt, hash []byte, err error) {
	f := strings.Split(phc, "$")
	if len(f) != 6 || f[0] != "" {
		return p, nil, nil, fmt.Errorf("%w: want $argon2id$v=19$m=M,t=T,p=P$SALT$HASH", errBadHash)
	}
	if f[1] != "argon2id" {
		return p, nil, nil, fmt.Errorf("%w: algorithm must be argon2id", errBadHash)
	}
	if f[2] != "v="+strconv.Itoa(argon2.Version) {
		return p, nil, nil, fmt.Errorf("%w: version must be v=%d", errBadHash, argon2.Version)
	}
	params := strings.Split(f[3], ",")
	if len(params) != 3 {
		return p, nil, nil, fmt.Errorf("%w: parameters must be m=M,t=T,p=P", errBadHash)
	}
	var vals [3]uint64
	for i, name := range []string{"m", "t", "p"} {
		v, ok := strings.CutPrefix(params[i], name+"=")
		if !ok {
			return p, nil, nil, fmt.Errorf("%w: parameters must be m=M,t=T,p=P", errBadHash)
		}
		vals[i], err = strconv.ParseUint(v, 10, 32)
		if err != nil || (len(v) > 1 && v[0] == '0') {
			return p, nil, nil, fmt.Errorf("%w: parameter %s is not a number", errBadHash, name)
		}
	}
	m, t, threads := vals[0], vals[1], vals[2]
	switch {
	case threads < 1 || threads > argonMaxThreads:
		return p, nil, nil, fmt.Errorf("%w: p=%d out of range 1..%d", errBadHash, threads, argonMaxThreads)
	case t < 1 || t > argonMaxTime:
		return p, nil, nil, fmt.Errorf("%w: t=%d out of range 1..%d", errBadHash, t, argonMaxTime)
	case m < 8*threads || m > argonMaxMemory:
		return p, nil, nil, fmt.Errorf("%w: m=%d out of range %d..%d", errBadHash, m, 8*threads, argonMaxMemory)
	}
	salt, err = b64.DecodeString(f[4])
	if err != nil || len(salt) < argonMinSalt || len(salt) > argonMaxSalt {
		return p, nil, nil, fmt.Errorf("%w: salt must be %d to %d bytes in unpadded base64", errBadHash, argonMinSalt, argonMaxSalt)
	}
	hash, err = b64.DecodeString(f[5])
	if err != nil || len(hash) < argonMinKey || len(hash) > argonMaxKey {
		return p, nil, nil, fmt.Errorf("%w: hash must be %d to %d bytes in unpadded base64", errBadHash, argonMinKey, argonMaxKey)
	}
	p = argonParams{time: uint32(t), memory: uint32(m), threads: uint8(threads), keyLen: uint32(len(hash)), saltLen: len(salt)}
	return p, salt, hash, nil
}
