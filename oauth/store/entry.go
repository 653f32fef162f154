package store

import (
	"bytes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/chacha20poly1305"
)

// Params are the Argon2id parameters of a key. They are stored in each file,
// so that they can be raised later without breaking existing entries.
type Params struct {
	Time    uint32 `json:"time"`
	Memory  uint32 `json:"memory"` // KiB
	Threads uint8  `json:"threads"`
}

// DefaultParams cost about 64 MiB of memory and a few tenths of a second.
var DefaultParams = Params{Time: 3, Memory: 64 * 1024, Threads: 2}

func (p Params) validate() error {
	if p.Time < 1 || p.Time > maxKDFTime {
		return fmt.Errorf("argon2id time %d out of range 1..%d", p.Time, maxKDFTime)
	}
	if p.Threads < 1 || p.Threads > maxKDFThreads {
		return fmt.Errorf("argon2id threads %d out of range 1..%d", p.Threads, maxKDFThreads)
	}
	if p.Memory < 8*uint32(p.Threads) || p.Memory > maxKDFMemory {
		return fmt.Errorf("argon2id memory %d KiB out of range %d..%d", p.Memory, 8*uint32(p.Threads), maxKDFMemory)
	}
	return nil
}

// Meta is the clear-text part of an entry. Nothing in it is secret.
type Meta struct {
	Identity        string    `json:"identity,omitempty"` // who signed in (UPN), may differ from the local username
	Flow            string    `json:"flow,omitempty"`     // authcode, device, ...
	Created         time.Time `json:"created,omitzero"`
	AccessExpiry    time.Time `json:"access_expiry,omitzero"`
	RefreshObtained time.Time `json:"refresh_obtained,omitzero"` // when the current refresh token was issued
	LastRefresh     time.Time `json:"last_refresh,omitzero"`
	LastError       string    `json:"last_error,omitempty"`
	LastErrorHint   string    `json:"last_error_hint,omitempty"`
	NeedsSignIn     bool      `json:"needs_sign_in,omitempty"` // LastError means a person must sign in again
}

// Secret is the sealed part of an entry: an OAuth token set.
type Secret struct {
	AccessToken  string    `json:"access_token"`
	RefreshToken string    `json:"refresh_token,omitempty"`
	IDToken      string    `json:"id_token,omitempty"`
	Expiry       time.Time `json:"expiry,omitzero"`   // of the access token
	Obtained     time.Time `json:"obtained,omitzero"` // when the access token was requested
	Scopes       []string  `json:"scopes,omitempty"`
}

// String keeps tokens out of logs and error messages that print a Secret.
func (s Secret) String() string {
	return fmt.Sprintf("{access_token:%s refresh_token:%s id_token:%s expiry:%s scopes:%v}",
		redacted(s.AccessToken), redacted(s.RefreshToken), redacted(s.IDToken),
		s.Expiry.Format(time.RFC3339), s.Scopes)
}

// GoString keeps tokens out of %#v.
func (s Secret) GoString() string { return "store.Secret" + s.String() }

// LogValue keeps tokens out of slog output.
func (s Secret) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Bool("access_token", s.AccessToken != ""),
		slog.Bool("refresh_token", s.RefreshToken != ""),
		slog.Time("expiry", s.Expiry),
	)
}

func redacted(s string) string {
	if s == "" {
		return `""`
	}
	return "<redacted>"
}

// Entry is one account's entry.
type Entry struct {
	Meta   Meta
	Secret Secret
	// Stamp is the stamp of the file Unlock read. Save ignores it.
	Stamp Stamp
	// Outdated is set by Unlock when the file is in an older format;
	// saving the entry again (same key) rewrites it in the current one.
	Outdated bool
}

// Key is a key derived from a password, with the parameters and salt that
// derive it again. Keep it to re-seal rotated tokens without the password.
type Key struct {
	key    [keyLen]byte
	params Params
	salt   []byte
}

// Params returns the KDF parameters the key was derived with.
func (k *Key) Params() Params { return k.params }

// NewKey derives a key from password with a fresh salt and DefaultParams.
func NewKey(password string) (*Key, error) { return NewKeyParams(password, DefaultParams) }

// NewKeyParams derives a key from password with a fresh salt and p.
func NewKeyParams(password string, p Params) (*Key, error) {
	if err := p.validate(); err != nil {
		return nil, fmt.Errorf("new key: %w", err)
	}
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return nil, fmt.Errorf("new key: %w", err)
	}
	return deriveKey(password, salt, p), nil
}

func deriveKey(password string, salt []byte, p Params) *Key {
	k := &Key{params: p, salt: bytes.Clone(salt)}
	copy(k.key[:], argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, keyLen))
	return k
}

// sub derives a named subkey of the KDF output (format 2).
func (k *Key) sub(label string) []byte {
	m := hmac.New(sha256.New, k.key[:])
	m.Write([]byte(label))
	return m.Sum(nil)
}

// check is the key-check value stored in format 2 files.
func (k *Key) check() []byte { return k.sub(checkLabel)[:checkLen] }

// aead returns the AEAD of a file of the given version.
func (k *Key) aead(version int) (cipher.AEAD, error) {
	if version == fileVersionV1 {
		return chacha20poly1305.NewX(k.key[:])
	}
	return chacha20poly1305.NewX(k.sub(aeadKeyLabel))
}

// Stamp identifies the secret content of a token file: it changes whenever
// the tokens or the key change (every Save), not when only Meta changes.
// The zero Stamp means "no file". Stamps are comparable with ==.
type Stamp struct{ sum [sha256.Size]byte }

// IsZero reports whether s is the stamp of a missing file.
func (s Stamp) IsZero() bool { return s == Stamp{} }

// fileJSON is the on-disk format.
type fileJSON struct {
	Version    int     `json:"version"`
	Username   string  `json:"username"`
	Meta       Meta    `json:"meta"`
	KDF        kdfJSON `json:"kdf"`
	AEAD       string  `json:"aead"`
	Check      []byte  `json:"check,omitempty"` // key-check value; format 2
	Nonce      []byte  `json:"nonce"`
	Ciphertext []byte  `json:"ciphertext"`
}

// ad is the associated data the entry is sealed with. Format 1 bound only
// the account name; format 2 binds every field that decides how the entry
// is used, each length-prefixed so that no two field lists encode alike.
func (f *fileJSON) ad() []byte {
	if f.Version == fileVersionV1 {
		return []byte(aadPrefixV1 + f.Username)
	}
	b := []byte(aadPrefix)
	field := func(v []byte) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	field([]byte(f.Username))
	field([]byte(f.Meta.Identity))
	field([]byte(f.Meta.Flow))
	field([]byte(f.KDF.Alg))
	b = binary.BigEndian.AppendUint32(b, f.KDF.Time)
	b = binary.BigEndian.AppendUint32(b, f.KDF.Memory)
	b = append(b, f.KDF.Threads)
	field(f.KDF.Salt)
	field([]byte(f.AEAD))
	return b
}

type kdfJSON struct {
	Alg string `json:"alg"`
	Params
	Salt []byte `json:"salt"`
}

func (f *fileJSON) stamp() Stamp {
	h := sha256.New()
	// Every Save draws a new nonce, so the stamp changes with every Save.
	h.Write(f.KDF.Salt)
	h.Write([]byte{0})
	h.Write(f.Nonce)
	h.Write([]byte{0})
	h.Write(f.Ciphertext)
	var s Stamp
	h.Sum(s.sum[:0])
	return s
}
