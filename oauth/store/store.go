// Package store owns mailproxy's token store on disk: one file per account,
// whose secret part (the OAuth tokens) is sealed with XChaCha20-Poly1305
// under a key derived with Argon2id from the account's local password.
//
// The store holds no password and no password hash: a password is right when
// it opens the entry. Files are written atomically (temporary file, fsync,
// rename, fsync of the directory), mode 0600, in a 0700 directory. A small
// clear-text part (Meta) says who signed in and when tokens were refreshed,
// so that `mailproxy status` works without passwords; it holds nothing
// secret.
//
// Format 2 (written since format 1 files are read and rewritten on their
// next save) binds everything that decides how the entry is used into the
// AEAD's associated data: the account name, Meta.Identity (the XOAUTH2
// user), Meta.Flow and the KDF parameters and salt, so that editing them
// makes the entry fail to open instead of changing what it does. It also
// stores a key-check value, a MAC of a fixed label under the derived key,
// so that a wrong password (the check fails) can be told apart from a
// damaged file (the check passes, the AEAD does not): the latter is a
// *DamagedError.
package store

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"golang.org/x/crypto/chacha20poly1305"
)

// The two ways opening an entry fails that callers act on. They are
// recognised by behaviour too (BadCredentials(), NotSignedIn()), as
// auth.Vault asks, so that neither side imports the other.
var (
	// ErrBadCredentials: the password does not open the entry.
	ErrBadCredentials error = &openError{"invalid credentials", true}
	// ErrNotSignedIn: there is no entry for the account.
	ErrNotSignedIn error = &openError{"account is not signed in", false}
)

type openError struct {
	msg string
	bad bool // BadCredentials, else NotSignedIn
}

func (e *openError) Error() string        { return e.msg }
func (e *openError) BadCredentials() bool { return e.bad }
func (e *openError) NotSignedIn() bool    { return !e.bad }

// On-disk format constants. Changing any of them makes existing files
// unreadable: bump fileVersion and keep reading the old format instead.
const (
	fileVersion   = 2 // what Save writes
	fileVersionV1 = 1 // still read; rewritten as fileVersion on the next save
	kdfAlg        = "argon2id"
	aeadAlg       = "xchacha20poly1305"
	aadPrefixV1   = "mailproxy-token-v1\x00"
	aadPrefix     = "mailproxy-token-v2\x00"
	checkLabel    = "mailproxy-token-v2 key check"
	aeadKeyLabel  = "mailproxy-token-v2 aead key"
	checkLen      = 16

	tokenSuffix = ".token"
	lockSuffix  = ".lock"
	tempSuffix  = ".tmp" // temporary files: <name>.token.<random>.tmp

	keyLen  = 32
	saltLen = 16

	maxFileSize = 1 << 20 // a token file is a few KiB; refuse anything absurd
	maxNameLen  = 200     // escaped name; leaves room for suffixes under NAME_MAX
)

// Bounds on KDF parameters read from a file, so that a damaged or hostile
// file cannot make Unlock allocate gigabytes or spin for seconds: at the
// bounds one derivation takes about a second on a current CPU.
const (
	maxKDFTime    = 10
	maxKDFMemory  = 1 << 20 // KiB: 1 GiB
	maxKDFThreads = 64
)

var (
	// ErrCorrupt is wrapped by errors about a token file that cannot be
	// parsed or does not belong to the account it is named after.
	ErrCorrupt = errors.New("token file is damaged")
	// ErrChanged is returned by SaveIf when the file changed since the
	// caller read it (for example `mailproxy login` ran meanwhile).
	ErrChanged = errors.New("token file changed since it was read")
)

// DamagedError is returned by Unlock when the password is right (the key
// check passes) but the sealed part does not open: the file was damaged
// or edited. It wraps ErrCorrupt. Its NeedsSignIn and Hint let the proxy
// tell the client and the admin what to do without importing this package.
type DamagedError struct {
	Username string
	Reason   string
}

func (e *DamagedError) Error() string {
	return fmt.Sprintf("token file for %q is damaged: %s", e.Username, e.Reason)
}

func (e *DamagedError) Unwrap() error { return ErrCorrupt }

// NeedsSignIn is true: only a new sign-in writes a usable entry.
func (e *DamagedError) NeedsSignIn() bool { return true }

// Hint says what to do.
func (e *DamagedError) Hint() string {
	return "the token file is damaged (the password is right but the sealed tokens do not decrypt); sign in again: mailproxy login <user>"
}

// Store is a directory of token files.
type Store struct {
	// KDF are the parameters for new keys made by Store.NewKey; the zero
	// value means DefaultParams. Existing files keep the parameters they
	// were written with. Set it before use.
	KDF Params

	dir string

	mu    sync.Mutex             // protects locks
	locks map[string]*sync.Mutex // per file name: serializes writers inside this process
}

// Open opens (creating it if needed) the store in dir. dir must be a
// directory (not a symbolic link) owned by the current user; looser
// permissions than 0700 are tightened. Temporary files left by a crash
// between write and rename are removed.
func Open(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("open token store: no directory given")
	}
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("open token store: %w", err)
		}
		fi, err = os.Lstat(dir)
	}
	if err != nil {
		return nil, fmt.Errorf("open token store: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return nil, fmt.Errorf("open token store: %s is a symbolic link; give the real directory", dir)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("open token store: %s is not a directory", dir)
	}
	if err := checkDir(dir, fi); err != nil {
		return nil, fmt.Errorf("open token store: %w", err)
	}
	s := &Store{dir: dir, locks: make(map[string]*sync.Mutex)}
	if err := s.cleanTemp(); err != nil {
		return nil, fmt.Errorf("open token store: %w", err)
	}
	return s, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// Params returns the parameters Store.NewKey uses.
func (s *Store) Params() Params {
	if s.KDF == (Params{}) {
		return DefaultParams
	}
	return s.KDF
}

// NewKey derives a key from password with a fresh salt and s.Params().
func (s *Store) NewKey(password string) (*Key, error) { return NewKeyParams(password, s.Params()) }

// cleanTemp removes temporary files left behind by a crash. It takes each
// account's lock first so that a Save running in another process right now
// keeps its file.
func (s *Store) cleanTemp() error {
	des, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	for _, de := range des {
		n := de.Name()
		if !strings.HasSuffix(n, tempSuffix) {
			continue
		}
		i := strings.Index(n, tokenSuffix+".")
		if i <= 0 {
			continue
		}
		unlock, err := s.lockName(n[:i])
		if err != nil {
			return err
		}
		err = os.Remove(filepath.Join(s.dir, n))
		unlock()
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// fileName maps a username to the base name of its files: lowercased, with
// every byte outside [a-z0-9._@+-] written as %XX.
func fileName(username string) (string, error) {
	u := strings.ToLower(username)
	if u == "" {
		return "", errors.New("empty username")
	}
	var b strings.Builder
	for i := 0; i < len(u); i++ {
		c := u[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '.', c == '_', c == '@', c == '+', c == '-':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	if b.Len() > maxNameLen {
		return "", fmt.Errorf("username too long (%d bytes)", len(username))
	}
	return b.String(), nil
}

// unescapeName reverses fileName (the result is the lowercased username).
func unescapeName(name string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c != '%' {
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(name) {
			return "", false
		}
		var v byte
		for _, h := range []byte{name[i+1], name[i+2]} {
			v <<= 4
			switch {
			case '0' <= h && h <= '9':
				v |= h - '0'
			case 'A' <= h && h <= 'F':
				v |= h - 'A' + 10
			default:
				return "", false
			}
		}
		b.WriteByte(v)
		i += 2
	}
	return b.String(), b.Len() > 0
}

func (s *Store) path(name string) string { return filepath.Join(s.dir, name+tokenSuffix) }

// Lock takes the account's lock: an in-process mutex plus a file lock on
// "<name>.lock" (flock(2) on Linux, the BSDs, macOS and illumos, LockFileEx
// on Windows) so that two processes (serve and login) do not lose each
// other's writes. On other systems only the in-process mutex is taken. Save, SaveIf, UpdateMeta and Remove take the
// lock themselves; do not call them while holding it.
func (s *Store) Lock(username string) (unlock func(), err error) {
	name, err := fileName(username)
	if err != nil {
		return nil, fmt.Errorf("lock token file: %w", err)
	}
	return s.lockName(name)
}

func (s *Store) lockName(name string) (func(), error) {
	s.mu.Lock()
	mu := s.locks[name]
	if mu == nil {
		mu = new(sync.Mutex)
		s.locks[name] = mu
	}
	s.mu.Unlock()

	mu.Lock()
	f, err := lockFile(filepath.Join(s.dir, name+lockSuffix))
	if err != nil {
		mu.Unlock()
		return nil, fmt.Errorf("lock token file %s: %w", name, err)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			unlockFile(f)
			mu.Unlock()
		})
	}, nil
}

// read reads and parses the file called name. A missing file yields an
// error wrapping ErrNotSignedIn.
func (s *Store) read(name, username string) (*fileJSON, error) {
	f, err := openRead(s.path(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no token file for %q: %w", username, ErrNotSignedIn)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("token file for %q larger than %d bytes: %w", username, maxFileSize, ErrCorrupt)
	}
	var fj fileJSON
	if err := json.Unmarshal(data, &fj); err != nil {
		return nil, fmt.Errorf("token file for %q: %w (%v)", username, ErrCorrupt, err)
	}
	switch {
	case fj.Version != fileVersion && fj.Version != fileVersionV1:
		return nil, fmt.Errorf("token file for %q has version %d, want %d: %w", username, fj.Version, fileVersion, ErrCorrupt)
	case fj.Version == fileVersion && len(fj.Check) != checkLen:
		return nil, fmt.Errorf("token file for %q: key check value missing or of the wrong size: %w", username, ErrCorrupt)
	case fj.Username != strings.ToLower(username):
		return nil, fmt.Errorf("token file for %q names account %q: %w", username, fj.Username, ErrCorrupt)
	case fj.KDF.Alg != kdfAlg || fj.AEAD != aeadAlg:
		return nil, fmt.Errorf("token file for %q uses %s/%s, want %s/%s: %w", username, fj.KDF.Alg, fj.AEAD, kdfAlg, aeadAlg, ErrCorrupt)
	case len(fj.Nonce) != chacha20poly1305.NonceSizeX || len(fj.KDF.Salt) < 8 || len(fj.Ciphertext) < chacha20poly1305.Overhead:
		return nil, fmt.Errorf("token file for %q: bad nonce, salt or ciphertext size: %w", username, ErrCorrupt)
	}
	if err := fj.KDF.Params.validate(); err != nil {
		return nil, fmt.Errorf("token file for %q: %w (%v)", username, ErrCorrupt, err)
	}
	return &fj, nil
}

// Unlock reads username's entry and opens it with password, deriving the key
// with the parameters stored in the file. A wrong password yields an error
// wrapping ErrBadCredentials, a missing entry one wrapping
// ErrNotSignedIn, a file whose key check passes but whose sealed part
// does not open a *DamagedError. Unlock never changes the file.
func (s *Store) Unlock(username, password string) (*Entry, *Key, error) {
	name, err := fileName(username)
	if err != nil {
		return nil, nil, fmt.Errorf("unlock tokens: %w", err)
	}
	fj, err := s.read(name, username)
	if err != nil {
		return nil, nil, fmt.Errorf("unlock tokens: %w", err)
	}
	k := deriveKey(password, fj.KDF.Salt, fj.KDF.Params)
	e, err := open(fj, k, username)
	if err != nil {
		return nil, nil, err
	}
	return e, k, nil
}

// UnlockWithKey opens username's entry with a key an earlier Unlock or
// NewKey gave, without the password: for re-reading an entry that another
// process re-sealed with the same key (rotated tokens). An entry sealed
// under another key (a new sign-in) yields an error wrapping
// ErrBadCredentials.
func (s *Store) UnlockWithKey(username string, k *Key) (*Entry, error) {
	name, err := fileName(username)
	if err != nil {
		return nil, fmt.Errorf("unlock tokens: %w", err)
	}
	fj, err := s.read(name, username)
	if err != nil {
		return nil, fmt.Errorf("unlock tokens: %w", err)
	}
	if fj.KDF.Params != k.params || !bytes.Equal(fj.KDF.Salt, k.salt) {
		return nil, fmt.Errorf("unlock tokens for %q: entry sealed under another key: %w", username, ErrBadCredentials)
	}
	return open(fj, k, username)
}

// open checks k against fj and opens the sealed part.
func open(fj *fileJSON, k *Key, username string) (*Entry, error) {
	if fj.Version != fileVersionV1 && !hmac.Equal(k.check(), fj.Check) {
		return nil, fmt.Errorf("unlock tokens for %q: %w", username, ErrBadCredentials)
	}
	aead, err := k.aead(fj.Version)
	if err != nil {
		return nil, fmt.Errorf("unlock tokens for %q: %w", username, err)
	}
	pt, err := aead.Open(nil, fj.Nonce, fj.Ciphertext, fj.ad())
	if err != nil {
		if fj.Version == fileVersionV1 {
			// Format 1 has no key check: a wrong password and a damaged
			// file look the same.
			return nil, fmt.Errorf("unlock tokens for %q: %w", username, ErrBadCredentials)
		}
		return nil, &DamagedError{Username: strings.ToLower(username),
			Reason: "the key check passes but the sealed part or the fields bound to it (identity, flow, KDF parameters) were changed"}
	}
	e := &Entry{Meta: fj.Meta, Stamp: fj.stamp(), Outdated: fj.Version != fileVersion}
	if err := json.Unmarshal(pt, &e.Secret); err != nil {
		return nil, &DamagedError{Username: strings.ToLower(username), Reason: fmt.Sprintf("sealed part: %v", err)}
	}
	return e, nil
}

// ReadMeta returns username's clear-text metadata; no password needed.
func (s *Store) ReadMeta(username string) (*Meta, error) {
	name, err := fileName(username)
	if err != nil {
		return nil, fmt.Errorf("read token metadata: %w", err)
	}
	fj, err := s.read(name, username)
	if err != nil {
		return nil, fmt.Errorf("read token metadata: %w", err)
	}
	return &fj.Meta, nil
}

// Stamp returns the stamp of username's entry: a cheap way to notice that
// another process (`mailproxy login`) replaced it. A missing entry yields
// the zero Stamp and an error wrapping ErrNotSignedIn.
func (s *Store) Stamp(username string) (Stamp, error) {
	name, err := fileName(username)
	if err != nil {
		return Stamp{}, fmt.Errorf("stamp token file: %w", err)
	}
	fj, err := s.read(name, username)
	if err != nil {
		return Stamp{}, fmt.Errorf("stamp token file: %w", err)
	}
	return fj.stamp(), nil
}

// Save seals e.Secret with k and writes the entry atomically, replacing any
// previous one.
func (s *Store) Save(username string, k *Key, e *Entry) error {
	_, err := s.save(username, k, e, nil)
	return err
}

// SaveIf is Save, but only when the file's stamp still equals prev (the
// zero Stamp: only when there is no file); else it returns ErrChanged and
// writes nothing. It returns the stamp of the file it wrote.
func (s *Store) SaveIf(username string, k *Key, e *Entry, prev Stamp) (Stamp, error) {
	return s.save(username, k, e, &prev)
}

func (s *Store) save(username string, k *Key, e *Entry, prev *Stamp) (Stamp, error) {
	if k == nil || e == nil {
		return Stamp{}, errors.New("save tokens: nil key or entry")
	}
	name, err := fileName(username)
	if err != nil {
		return Stamp{}, fmt.Errorf("save tokens: %w", err)
	}
	pt, err := json.Marshal(&e.Secret)
	if err != nil {
		return Stamp{}, fmt.Errorf("save tokens for %q: %w", username, err)
	}
	aead, err := k.aead(fileVersion)
	if err != nil {
		return Stamp{}, fmt.Errorf("save tokens for %q: %w", username, err)
	}
	fj := &fileJSON{
		Version:  fileVersion,
		Username: strings.ToLower(username),
		Meta:     e.Meta,
		KDF:      kdfJSON{Alg: kdfAlg, Params: k.params, Salt: k.salt},
		AEAD:     aeadAlg,
		Check:    k.check(),
		Nonce:    make([]byte, chacha20poly1305.NonceSizeX),
	}
	if _, err := rand.Read(fj.Nonce); err != nil {
		return Stamp{}, fmt.Errorf("save tokens for %q: %w", username, err)
	}
	fj.Ciphertext = aead.Seal(nil, fj.Nonce, pt, fj.ad())

	unlock, err := s.lockName(name)
	if err != nil {
		return Stamp{}, fmt.Errorf("save tokens for %q: %w", username, err)
	}
	defer unlock()
	if prev != nil {
		cur, err := s.read(name, username)
		switch {
		case errors.Is(err, ErrNotSignedIn):
			if !prev.IsZero() {
				return Stamp{}, fmt.Errorf("save tokens for %q: %w", username, ErrChanged)
			}
		case err != nil:
			return Stamp{}, fmt.Errorf("save tokens for %q: %w", username, err)
		case cur.stamp() != *prev:
			return Stamp{}, fmt.Errorf("save tokens for %q: %w", username, ErrChanged)
		}
	}
	if err := s.write(name, fj); err != nil {
		return Stamp{}, fmt.Errorf("save tokens for %q: %w", username, err)
	}
	return fj.stamp(), nil
}

// UpdateMeta rewrites username's metadata with fn, keeping the sealed part
// (and so the stamp) as it is. Identity and Flow are bound to the sealed
// part and stay as they are whatever fn does.
func (s *Store) UpdateMeta(username string, fn func(*Meta)) error {
	name, err := fileName(username)
	if err != nil {
		return fmt.Errorf("update token metadata: %w", err)
	}
	unlock, err := s.lockName(name)
	if err != nil {
		return fmt.Errorf("update token metadata for %q: %w", username, err)
	}
	defer unlock()
	fj, err := s.read(name, username)
	if err != nil {
		return fmt.Errorf("update token metadata: %w", err)
	}
	identity, flow := fj.Meta.Identity, fj.Meta.Flow
	fn(&fj.Meta)
	fj.Meta.Identity, fj.Meta.Flow = identity, flow
	if err := s.write(name, fj); err != nil {
		return fmt.Errorf("update token metadata for %q: %w", username, err)
	}
	return nil
}

// Remove deletes username's entry. A missing entry yields an error wrapping
// ErrNotSignedIn.
func (s *Store) Remove(username string) error {
	name, err := fileName(username)
	if err != nil {
		return fmt.Errorf("remove tokens: %w", err)
	}
	unlock, err := s.lockName(name)
	if err != nil {
		return fmt.Errorf("remove tokens for %q: %w", username, err)
	}
	defer unlock()
	err = os.Remove(s.path(name))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove tokens for %q: %w", username, ErrNotSignedIn)
	}
	if err != nil {
		return fmt.Errorf("remove tokens for %q: %w", username, err)
	}
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("remove tokens for %q: %w", username, err)
	}
	return nil
}

// List returns the (lowercased) usernames that have an entry, sorted.
func (s *Store) List() ([]string, error) {
	des, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list token files: %w", err)
	}
	var users []string
	for _, de := range des {
		n, ok := strings.CutSuffix(de.Name(), tokenSuffix)
		if !ok || !de.Type().IsRegular() {
			continue
		}
		if u, ok := unescapeName(n); ok {
			users = append(users, u)
		}
	}
	sort.Strings(users)
	return users, nil
}

// write replaces the file called name with fj, atomically. The caller holds
// the lock.
func (s *Store) write(name string, fj *fileJSON) (err error) {
	data, err := json.MarshalIndent(fj, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	f, err := os.CreateTemp(s.dir, name+tokenSuffix+".*"+tempSuffix) // mode 0600
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = replaceFile(tmp, s.path(name)); err != nil {
		return err
	}
	return syncDir(s.dir)
}
