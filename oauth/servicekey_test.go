package oauth

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestServiceKey(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	dir := t.TempDir()
	if _, err := LoadServiceKey(dir, false); err == nil {
		t.Fatal("LoadServiceKey without create made a key")
	}
	k1, err := LoadServiceKey(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, ServiceKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v; want 0600", err, fi.Mode())
	}
	k2, err := LoadServiceKey(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	if k1.Password("a@x.org") != k2.Password("A@X.org") {
		t.Error("the same key gives another password on reload (or for another case)")
	}
	if k1.Password("a@x.org") == k1.Password("b@x.org") {
		t.Error("two accounts share a password")
	}
	if strings.Contains(k1.String(), string(k1.key)) {
		t.Error("String shows the key")
	}
	// Another key, another password.
	other, _ := LoadServiceKey(t.TempDir(), true)
	if other.Password("a@x.org") == k1.Password("a@x.org") {
		t.Error("two keys give the same password")
	}
	// A key others may read is refused.
	os.Chmod(filepath.Join(dir, ServiceKeyFile), 0o644)
	if _, err := LoadServiceKey(dir, true); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("group-readable key: %v, want a refusal", err)
	}
}

func TestServiceKeyFromCredentials(t *testing.T) {
	creds := t.TempDir()
	os.WriteFile(filepath.Join(creds, ServiceKeyCredential), []byte(strings.Repeat("k", 40)+"\n"), 0o400)
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	state := t.TempDir()
	k, err := LoadServiceKey(state, true)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(k.Source, creds) {
		t.Errorf("key from %s, want the credential", k.Source)
	}
	if _, err := os.Stat(filepath.Join(state, ServiceKeyFile)); !os.IsNotExist(err) {
		t.Error("a key file was made in state_dir although the credential exists")
	}
	os.WriteFile(filepath.Join(creds, ServiceKeyCredential), []byte("short"), 0o400)
	if _, err := LoadServiceKey(state, true); err == nil {
		t.Error("a 5-byte credential was accepted")
	}
}
