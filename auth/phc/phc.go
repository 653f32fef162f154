// Package phc parses Argon2id password hashes in PHC string format,
// "$argon2id$v=19$m=M,t=T,p=P$SALT$HASH": the one parser, with the one set
// of bounds, for the login check (auth.VerifyPassword) and for config
// validation, so that a hash the config accepts is one every login can
// check. It imports nothing of ours; config may import it.
package phc

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Bounds on the parameters Parse accepts, so that a hand-edited
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

// ErrBadHash is wrapped by every Parse error. The messages never quote the
// hash.
var ErrBadHash = errors.New("malformed password hash")

// Hash is a parsed Argon2id hash.
type Hash struct {
	Time    uint32 // passes over memory
	Memory  uint32 // KiB
	Threads uint8
	Salt    []byte
	Hash    []byte // the key; its length is the key length
}

var b64 = base64.RawStdEncoding

// Parse parses "$argon2id$v=19$m=M,t=T,p=P$SALT$HASH" within the bounds
// above (memory up to 4 GiB, time up to 64, 1 to 64 lanes, salt of 8 to
// 64 bytes, hash of 16 to 64). Errors wrap ErrBadHash.
func Parse(phc string) (Hash, error) {
	var p Hash
	var err error
	f := strings.Split(phc, "$")
	if len(f) != 6 || f[0] != "" {
		return p, fmt.Errorf("%w: want $argon2id$v=19$m=M,t=T,p=P$SALT$HASH", ErrBadHash)
	}
	if f[1] != "argon2id" {
		return p, fmt.Errorf("%w: algorithm must be argon2id", ErrBadHash)
	}
	if f[2] != "v="+strconv.Itoa(argon2.Version) {
		return p, fmt.Errorf("%w: version must be v=%d", ErrBadHash, argon2.Version)
	}
	params := strings.Split(f[3], ",")
	if len(params) != 3 {
		return p, fmt.Errorf("%w: parameters must be m=M,t=T,p=P", ErrBadHash)
	}
	var vals [3]uint64
	for i, name := range []string{"m", "t", "p"} {
		v, ok := strings.CutPrefix(params[i], name+"=")
		if !ok {
			return p, fmt.Errorf("%w: parameters must be m=M,t=T,p=P", ErrBadHash)
		}
		vals[i], err = strconv.ParseUint(v, 10, 32)
		if err != nil || (len(v) > 1 && v[0] == '0') {
			return p, fmt.Errorf("%w: parameter %s is not a number", ErrBadHash, name)
		}
	}
	m, t, threads := vals[0], vals[1], vals[2]
	switch {
	case threads < 1 || threads > argonMaxThreads:
		return p, fmt.Errorf("%w: p=%d out of range 1..%d", ErrBadHash, threads, argonMaxThreads)
	case t < 1 || t > argonMaxTime:
		return p, fmt.Errorf("%w: t=%d out of range 1..%d", ErrBadHash, t, argonMaxTime)
	case m < 8*threads || m > argonMaxMemory:
		return p, fmt.Errorf("%w: m=%d out of range %d..%d", ErrBadHash, m, 8*threads, argonMaxMemory)
	}
	salt, err := b64.DecodeString(f[4])
	if err != nil || len(salt) < argonMinSalt || len(salt) > argonMaxSalt {
		return p, fmt.Errorf("%w: salt must be %d to %d bytes in unpadded base64", ErrBadHash, argonMinSalt, argonMaxSalt)
	}
	hash, err := b64.DecodeString(f[5])
	if err != nil || len(hash) < argonMinKey || len(hash) > argonMaxKey {
		return p, fmt.Errorf("%w: hash must be %d to %d bytes in unpadded base64", ErrBadHash, argonMinKey, argonMaxKey)
	}
	return Hash{Time: uint32(t), Memory: uint32(m), Threads: uint8(threads), Salt: salt, Hash: hash}, nil
}
