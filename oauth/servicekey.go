package oauth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Where the service key of seal = "service" accounts comes from.
const (
	// ServiceKeyCredential is the systemd credential name: with
	// LoadCredentialEncrypted= the key is stored encrypted with the host's
	// (or TPM's) key, so a copy of state_dir alone cannot open the tokens.
	ServiceKeyCredential = "mailproxy-service-key"
	// ServiceKeyFile is the file in state_dir used otherwise; created at
	// first use, 0600.
	ServiceKeyFile = "service.key"

	serviceKeyBytes = 32
)

// ServiceKey is the key the daemon holds for seal = "service" accounts. It
// never reaches a log line or an error.
type ServiceKey struct {
	key    []byte
	Source string // the file it came from, for messages
}

// String hides the key.
func (k *ServiceKey) String() string { return "oauth.ServiceKey(" + k.Source + ")" }

// LoadServiceKey returns the service key: the systemd credential
// ServiceKeyCredential when $CREDENTIALS_DIRECTORY holds it, else
// state_dir/service.key, which is created (32 random bytes, mode 0600) if
// create is set and it does not exist.
func LoadServiceKey(stateDir string, create bool) (*ServiceKey, error) {
	if dir := os.Getenv("CREDENTIALS_DIRECTORY"); dir != "" {
		path := filepath.Join(dir, ServiceKeyCredential)
		if data, err := readKeyFile(path, false); err == nil {
			return &ServiceKey{key: data, Source: path}, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("service key %s: %w", path, err)
		}
	}
	path := filepath.Join(stateDir, ServiceKeyFile)
	data, err := readKeyFile(path, true)
	if err == nil {
		return &ServiceKey{key: data, Source: path}, nil
	}
	if !errors.Is(err, os.ErrNotExist) || !create {
		return nil, fmt.Errorf("service key %s: %w", path, err)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("service key: %w", err)
	}
	raw := make([]byte, serviceKeyBytes)
	if _, err := io.ReadFull(rand.Reader, raw); err != nil {
		return nil, fmt.Errorf("service key: %w", err)
	}
	text := []byte(base64.StdEncoding.EncodeToString(raw) + "\n")
	if err := writeNew(path, text); err != nil {
		if errors.Is(err, os.ErrExist) { // another process made it first
			return LoadServiceKey(stateDir, false)
		}
		return nil, fmt.Errorf("service key %s: %w", path, err)
	}
	return &ServiceKey{key: text[:len(text)-1], Source: path}, nil
}

// readKeyFile reads a key file: at least 32 bytes of key material (any
// bytes; a trailing newline is not part of it). With private, a file
// others may read is refused (systemd sets a credential's mode itself).
func readKeyFile(path string, private bool) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	if private && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("mode %o: others may read it; chmod 600", fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	data = []byte(strings.TrimRight(string(data), "\r\n"))
	if len(data) < serviceKeyBytes {
		return nil, fmt.Errorf("holds %d bytes, want at least %d", len(data), serviceKeyBytes)
	}
	return data, nil
}

// writeNew creates path with data: temp file, fsync, link (fails if path
// exists), fsync of the directory.
func writeNew(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".service-key-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Password returns the local password that seals a service account's
// tokens: HMAC-SHA256(key, username), so that the token store's own
// sealing (Argon2id, AEAD) serves both kinds of account unchanged, and
// one account's password says nothing about another's.
func (k *ServiceKey) Password(username string) string {
	m := hmac.New(sha256.New, k.key)
	m.Write([]byte("mailproxy seal service\x00" + strings.ToLower(username)))
	return base64.RawStdEncoding.EncodeToString(m.Sum(nil))
}
