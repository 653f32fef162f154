package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"
)

// rewrite edits the JSON of user's token file with fn.
func rewrite(t *testing.T, s *Store, user string, fn func(m map[string]any)) {
	t.Helper()
	path := s.path(user)
	var m map[string]any
	if err := json.Unmarshal(readFile(t, path), &m); err != nil {
		t.Fatal(err)
	}
	fn(m)
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestMetaBoundToSeal: the identity becomes the XOAUTH2 user and the flow
// decides how the account refreshes; editing either in the clear-text part
// must make the entry fail to open, as damaged, not as a wrong password.
func TestMetaBoundToSeal(t *testing.T) {
	for _, field := range []string{"identity", "flow"} {
		t.Run(field, func(t *testing.T) {
			s := openTest(t)
			saveTest(t, s, "alice", "correct horse", testEntry())
			rewrite(t, s, "alice", func(m map[string]any) {
				m["meta"].(map[string]any)[field] = "mallory@contoso.com"
			})
			_, _, err := s.Unlock("alice", "correct horse")
			var de *DamagedError
			if !errors.As(err, &de) || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Unlock(tampered %s) = %v, want a *DamagedError wrapping ErrCorrupt", field, err)
			}
			if errors.Is(err, ErrBadCredentials) {
				t.Errorf("Unlock(tampered %s) = %v: reported as a wrong password", field, err)
			}
			if !de.NeedsSignIn() || de.Hint() == "" {
				t.Errorf("DamagedError: NeedsSignIn() = %v, Hint() = %q; want true and a hint", de.NeedsSignIn(), de.Hint())
			}
		})
	}
}

// TestUpdateMetaKeepsBoundFields: UpdateMeta cannot break the seal.
func TestUpdateMetaKeepsBoundFields(t *testing.T) {
	s := openTest(t)
	saveTest(t, s, "alice", "correct horse", testEntry())
	if err := s.UpdateMeta("alice", func(m *Meta) { m.Identity, m.Flow, m.LastError = "x", "y", "boom" }); err != nil {
		t.Fatal(err)
	}
	e, _, err := s.Unlock("alice", "correct horse")
	if err != nil {
		t.Fatalf("Unlock() after UpdateMeta = %v", err)
	}
	if e.Meta.Identity != "alice@contoso.com" || e.Meta.LastError != "boom" {
		t.Errorf("Meta = %+v, want identity kept and last error set", e.Meta)
	}
}

// TestDamagedVersusWrongPassword: the key check tells the two apart.
func TestDamagedVersusWrongPassword(t *testing.T) {
	s := openTest(t)
	saveTest(t, s, "alice", "correct horse", testEntry())
	if _, _, err := s.Unlock("alice", "wrong horse!"); !errors.Is(err, ErrBadCredentials) || errors.Is(err, ErrCorrupt) {
		t.Errorf("Unlock(wrong password) = %v, want ErrBadCredentials only", err)
	}
	rewrite(t, s, "alice", func(m map[string]any) {
		ct := []byte(m["ciphertext"].(string)) // base64 text: flip one character
		if ct[10] == 'A' {
			ct[10] = 'B'
		} else {
			ct[10] = 'A'
		}
		m["ciphertext"] = string(ct)
	})
	_, _, err := s.Unlock("alice", "correct horse")
	var de *DamagedError
	if !errors.As(err, &de) {
		t.Errorf("Unlock(damaged ciphertext, right password) = %v, want *DamagedError", err)
	}
	if _, _, err := s.Unlock("alice", "wrong horse!"); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("Unlock(damaged ciphertext, wrong password) = %v, want ErrBadCredentials", err)
	}
}

// TestKDFBoundsFromFile: parameters over 1 GiB or t > 10 are refused
// before any derivation.
func TestKDFBoundsFromFile(t *testing.T) {
	for _, tc := range []struct {
		key string
		v   float64
	}{{"memory", 1<<20 + 1}, {"time", 11}} {
		s := openTest(t)
		saveTest(t, s, "alice", "correct horse", testEntry())
		rewrite(t, s, "alice", func(m map[string]any) { m["kdf"].(map[string]any)[tc.key] = tc.v })
		if _, _, err := s.Unlock("alice", "correct horse"); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Unlock(kdf.%s = %v) = %v, want ErrCorrupt", tc.key, tc.v, err)
		}
	}
	if _, err := NewKeyParams("pw", Params{Time: 11, Memory: 64, Threads: 1}); err == nil {
		t.Errorf("NewKeyParams(time 11) = nil error, want out of range")
	}
}

// writeV1 writes user's entry as the format 1 code did.
func writeV1(t *testing.T, s *Store, user string, k *Key, e *Entry) {
	t.Helper()
	aead, err := chacha20poly1305.NewX(k.key[:])
	if err != nil {
		t.Fatal(err)
	}
	pt, _ := json.Marshal(&e.Secret)
	fj := &fileJSON{Version: 1, Username: user, Meta: e.Meta,
		KDF: kdfJSON{Alg: kdfAlg, Params: k.params, Salt: k.salt}, AEAD: aeadAlg,
		Nonce: bytes.Repeat([]byte{7}, chacha20poly1305.NonceSizeX)}
	fj.Ciphertext = aead.Seal(nil, fj.Nonce, pt, []byte("mailproxy-token-v1\x00"+user))
	if err := s.write(user, fj); err != nil {
		t.Fatal(err)
	}
}

// TestReadsFormat1AndMigrates: files of the previous version open, say so,
// and are written in the current format by the next Save.
func TestReadsFormat1AndMigrates(t *testing.T) {
	s := openTest(t)
	k, err := s.NewKey("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	want := testEntry()
	writeV1(t, s, "alice", k, want)
	if _, _, err := s.Unlock("alice", "wrong horse!"); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("Unlock(v1, wrong password) = %v, want ErrBadCredentials", err)
	}
	e, k2, err := s.Unlock("alice", "correct horse")
	if err != nil {
		t.Fatalf("Unlock(v1) = %v", err)
	}
	if !e.Outdated || !reflect.DeepEqual(e.Secret, want.Secret) {
		t.Fatalf("Unlock(v1) = outdated %v, secret %v; want outdated and the stored secret", e.Outdated, e.Secret)
	}
	if err := s.Save("alice", k2, e); err != nil {
		t.Fatal(err)
	}
	var fj fileJSON
	if err := json.Unmarshal(readFile(t, s.path("alice")), &fj); err != nil {
		t.Fatal(err)
	}
	if fj.Version != fileVersion || len(fj.Check) != checkLen {
		t.Errorf("after Save: version %d, check %d bytes; want %d and %d", fj.Version, len(fj.Check), fileVersion, checkLen)
	}
	e, _, err = s.Unlock("alice", "correct horse")
	if err != nil || e.Outdated {
		t.Errorf("Unlock(migrated) = outdated %v, %v; want current, nil", e != nil && e.Outdated, err)
	}
}
