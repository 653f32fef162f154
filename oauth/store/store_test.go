package store

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"mailproxy/internal/wine"
)

// testParams keep the KDF cheap so the tests stay fast.
var testParams = Params{Time: 1, Memory: 64, Threads: 1}

func openTest(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "tokens"))
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	s.KDF = testParams
	return s
}

func testEntry() *Entry {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	return &Entry{
		Meta: Meta{Identity: "alice@contoso.com", Flow: "authcode", Created: now, AccessExpiry: now.Add(time.Hour)},
		Secret: Secret{
			AccessToken:  "AT-" + strings.Repeat("a", 1500),
			RefreshToken: "RT-secret-refresh-token-value",
			IDToken:      "ID-header.payload.sig",
			Expiry:       now.Add(time.Hour),
			Obtained:     now,
			Scopes:       []string{"offline_access", "https://outlook.office.com/IMAP.AccessAsUser.All"},
		},
	}
}

func saveTest(t *testing.T, s *Store, user, password string, e *Entry) *Key {
	t.Helper()
	k, err := s.NewKey(password)
	if err != nil {
		t.Fatalf("NewKey() = %v", err)
	}
	if err := s.Save(user, k, e); err != nil {
		t.Fatalf("Save(%q) = %v", user, err)
	}
	return k
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	s := openTest(t)
	want := testEntry()
	k := saveTest(t, s, "Alice@Contoso.com", "pw1", want)

	got, k2, err := s.Unlock("alice@contoso.COM", "pw1")
	if err != nil {
		t.Fatalf("Unlock() = %v", err)
	}
	if !reflect.DeepEqual(got.Secret, want.Secret) {
		t.Errorf("Unlock().Secret = %v, want %v", got.Secret, want.Secret)
	}
	if !reflect.DeepEqual(got.Meta, want.Meta) {
		t.Errorf("Unlock().Meta = %+v, want %+v", got.Meta, want.Meta)
	}
	if k2.key != k.key || k2.Params() != testParams {
		t.Errorf("Unlock() key differs from the saving key (params %+v)", k2.Params())
	}
	st, err := s.Stamp("alice@contoso.com")
	if err != nil || st != got.Stamp || st.IsZero() {
		t.Errorf("Stamp() = %v, %v; want %v (from Unlock)", st, err, got.Stamp)
	}
	users, err := s.List()
	if err != nil || !reflect.DeepEqual(users, []string{"alice@contoso.com"}) {
		t.Errorf("List() = %q, %v; want [alice@contoso.com]", users, err)
	}
}

func TestWrongPassword(t *testing.T) {
	s := openTest(t)
	saveTest(t, s, "alice", "right", testEntry())
	path := s.path("alice")
	before := readFile(t, path)
	fi1, _ := os.Stat(path)

	_, _, err := s.Unlock("alice", "wrong")
	if !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("Unlock(wrong) = %v, want ErrBadCredentials", err)
	}
	if after := readFile(t, path); !bytes.Equal(before, after) {
		t.Errorf("Unlock(wrong) changed the file")
	}
	if fi2, _ := os.Stat(path); !os.SameFile(fi1, fi2) || !fi1.ModTime().Equal(fi2.ModTime()) {
		t.Errorf("Unlock(wrong) replaced the file")
	}
	if strings.Contains(err.Error(), "wrong") || strings.Contains(err.Error(), "right") {
		t.Errorf("Unlock error %q contains a password", err)
	}
}

func TestMissing(t *testing.T) {
	s := openTest(t)
	if _, _, err := s.Unlock("bob", "x"); !errors.Is(err, ErrNotSignedIn) {
		t.Errorf("Unlock(missing) = %v, want ErrNotSignedIn", err)
	}
	if _, err := s.ReadMeta("bob"); !errors.Is(err, ErrNotSignedIn) {
		t.Errorf("ReadMeta(missing) = %v, want ErrNotSignedIn", err)
	}
	if st, err := s.Stamp("bob"); !errors.Is(err, ErrNotSignedIn) || !st.IsZero() {
		t.Errorf("Stamp(missing) = %v, %v; want zero, ErrNotSignedIn", st, err)
	}
	if err := s.Remove("bob"); !errors.Is(err, ErrNotSignedIn) {
		t.Errorf("Remove(missing) = %v, want ErrNotSignedIn", err)
	}
	if err := s.UpdateMeta("bob", func(*Meta) {}); !errors.Is(err, ErrNotSignedIn) {
		t.Errorf("UpdateMeta(missing) = %v, want ErrNotSignedIn", err)
	}
}

func TestNoSecretInFile(t *testing.T) {
	s := openTest(t)
	e := testEntry()
	saveTest(t, s, "alice", "pw-in-clear", e)
	data := readFile(t, s.path("alice"))
	for _, secret := range []string{e.Secret.AccessToken[:40], e.Secret.RefreshToken, e.Secret.IDToken, "pw-in-clear", "refresh_token", "access_token"} {
		if bytes.Contains(data, []byte(secret)) {
			t.Errorf("token file contains %q", secret)
		}
	}
	if !bytes.Contains(data, []byte(`"identity": "alice@contoso.com"`)) {
		t.Errorf("token file lacks the clear identity:\n%s", data)
	}
}

func TestSecretFormatting(t *testing.T) {
	e := testEntry()
	for _, s := range []string{e.Secret.String(), e.Secret.GoString()} {
		if strings.Contains(s, e.Secret.RefreshToken) || strings.Contains(s, "AT-aaa") {
			t.Errorf("Secret formatted as %q, which holds a token", s)
		}
	}
}

func TestPermissions(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no unix permissions")
	}
	dir := filepath.Join(t.TempDir(), "tokens")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir)
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	s.KDF = testParams
	saveTest(t, s, "alice", "pw", testEntry())
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode = %v, want 0700", fi.Mode().Perm())
	}
	if fi, _ := os.Stat(s.path("alice")); fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode = %v, want 0600", fi.Mode().Perm())
	}
	if err := s.UpdateMeta("alice", func(m *Meta) { m.LastError = "x" }); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(s.path("alice")); fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode after UpdateMeta = %v, want 0600", fi.Mode().Perm())
	}
}

func TestOpenRefusesSymlink(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "real")
	if err := os.Mkdir(real, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Skipf("no symlinks: %v", err)
	}
	wine.SkipIf(t, "os.Symlink succeeds but os.Lstat does not report the result as a link")
	if _, err := Open(link); err == nil {
		t.Errorf("Open(symlink) = nil error, want refusal")
	}
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := Open(file); err == nil {
		t.Errorf("Open(regular file) = nil error, want refusal")
	}
}

func TestLeftoverTempFile(t *testing.T) {
	s := openTest(t)
	e := testEntry()
	saveTest(t, s, "alice", "pw", e)
	// A crash between write and rename leaves a temp file behind.
	tmp := filepath.Join(s.dir, "alice.token.123456"+tempSuffix)
	if err := os.WriteFile(tmp, []byte(`{"version":1,"half`), 0o600); err != nil {
		t.Fatal(err)
	}
	got, _, err := s.Unlock("alice", "pw")
	if err != nil || got.Secret.RefreshToken != e.Secret.RefreshToken {
		t.Fatalf("Unlock() with a temp file around = %v, %v", got, err)
	}
	if users, _ := s.List(); len(users) != 1 {
		t.Errorf("List() = %q, want only alice", users)
	}
	s2, err := Open(s.dir)
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("temp file still there after Open: %v", err)
	}
	if _, _, err := s2.Unlock("alice", "pw"); err != nil {
		t.Errorf("Unlock() after cleanup = %v", err)
	}
}

func TestMetaWithoutPassword(t *testing.T) {
	s := openTest(t)
	e := testEntry()
	saveTest(t, s, "alice", "pw", e)
	st1, _ := s.Stamp("alice")
	m, err := s.ReadMeta("alice")
	if err != nil || !reflect.DeepEqual(*m, e.Meta) {
		t.Fatalf("ReadMeta() = %+v, %v; want %+v", m, err, e.Meta)
	}
	if err := s.UpdateMeta("alice", func(m *Meta) {
		m.LastError = "token endpoint: invalid_grant (AADSTS70008)"
		m.NeedsSignIn = true
	}); err != nil {
		t.Fatalf("UpdateMeta() = %v", err)
	}
	m, _ = s.ReadMeta("alice")
	if !m.NeedsSignIn || m.Identity != e.Meta.Identity {
		t.Errorf("ReadMeta() after UpdateMeta = %+v", m)
	}
	// The sealed part and so the stamp are kept.
	if st2, _ := s.Stamp("alice"); st2 != st1 {
		t.Errorf("Stamp() changed after UpdateMeta")
	}
	if got, _, err := s.Unlock("alice", "pw"); err != nil || got.Secret.RefreshToken != e.Secret.RefreshToken {
		t.Errorf("Unlock() after UpdateMeta = %v", err)
	}
}

func TestStampChangesOnSave(t *testing.T) {
	s := openTest(t)
	e := testEntry()
	k := saveTest(t, s, "alice", "pw", e)
	st1, _ := s.Stamp("alice")
	// Same key, same tokens: a new nonce still makes a new stamp.
	if err := s.Save("alice", k, e); err != nil {
		t.Fatal(err)
	}
	st2, _ := s.Stamp("alice")
	if st1 == st2 {
		t.Errorf("Stamp() unchanged after Save")
	}
	if _, err := s.SaveIf("alice", k, e, st1); !errors.Is(err, ErrChanged) {
		t.Errorf("SaveIf(stale stamp) = %v, want ErrChanged", err)
	}
	if st, _ := s.Stamp("alice"); st != st2 {
		t.Errorf("SaveIf(stale stamp) wrote the file")
	}
	st3, err := s.SaveIf("alice", k, e, st2)
	if err != nil {
		t.Fatalf("SaveIf(current stamp) = %v", err)
	}
	if st, _ := s.Stamp("alice"); st != st3 || st3 == st2 {
		t.Errorf("SaveIf() returned stamp %v, file has %v", st3, st)
	}
	if _, err := s.SaveIf("bob", k, e, st3); !errors.Is(err, ErrChanged) {
		t.Errorf("SaveIf(missing file, non-zero stamp) = %v, want ErrChanged", err)
	}
	if _, err := s.SaveIf("bob", k, e, Stamp{}); err != nil {
		t.Errorf("SaveIf(missing file, zero stamp) = %v", err)
	}
}

func TestParamsStoredAndHonoured(t *testing.T) {
	s := openTest(t)
	p := Params{Time: 2, Memory: 128, Threads: 2}
	k, err := NewKeyParams("pw", p)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Save("alice", k, testEntry()); err != nil {
		t.Fatal(err)
	}
	s.KDF = Params{Time: 1, Memory: 64, Threads: 1} // changed later: the file keeps its own
	_, k2, err := s.Unlock("alice", "pw")
	if err != nil {
		t.Fatalf("Unlock() = %v", err)
	}
	if k2.Params() != p {
		t.Errorf("Unlock() key params = %+v, want %+v", k2.Params(), p)
	}
	data := readFile(t, s.path("alice"))
	for _, want := range []string{`"alg": "argon2id"`, `"time": 2`, `"memory": 128`, `"threads": 2`, `"aead": "xchacha20poly1305"`} {
		if !bytes.Contains(data, []byte(want)) {
			t.Errorf("token file lacks %s", want)
		}
	}
	if (&Store{}).Params() != DefaultParams {
		t.Errorf("zero Store.Params() = %+v, want DefaultParams", (&Store{}).Params())
	}
}

func TestHostileParams(t *testing.T) {
	s := openTest(t)
	saveTest(t, s, "alice", "pw", testEntry())
	path := s.path("alice")
	data := readFile(t, path)
	data = bytes.Replace(data, []byte(`"memory": 64`), []byte(`"memory": 4000000000`), 1)
	os.WriteFile(path, data, 0o600)
	if _, _, err := s.Unlock("alice", "pw"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Unlock(huge memory) = %v, want ErrCorrupt", err)
	}
}

func TestFileNames(t *testing.T) {
	tests := []struct{ user, name string }{
		{"Alice@Contoso.com", "alice@contoso.com"},
		{"a.b_c+d-e", "a.b_c+d-e"},
		{"../etc/passwd", "..%2Fetc%2Fpasswd"},
		{`dom\user`, "dom%5Cuser"},
		{"100%", "100%25"},
		{"ünï", "%C3%BCn%C3%AF"},
	}
	for _, tt := range tests {
		got, err := fileName(tt.user)
		if err != nil || got != tt.name {
			t.Errorf("fileName(%q) = %q, %v; want %q", tt.user, got, err, tt.name)
		}
		back, ok := unescapeName(got)
		if !ok || back != strings.ToLower(tt.user) {
			t.Errorf("unescapeName(%q) = %q, %v; want %q", got, back, ok, strings.ToLower(tt.user))
		}
	}
	if _, err := fileName(""); err == nil {
		t.Errorf("fileName(\"\") = nil error")
	}
	if _, err := fileName(strings.Repeat("é", 100)); err == nil {
		t.Errorf("fileName(long) = nil error")
	}
}

func TestUsernameBoundToFile(t *testing.T) {
	s := openTest(t)
	saveTest(t, s, "alice", "pw", testEntry())
	// Copying alice's file to bob's name must not give bob alice's tokens.
	os.WriteFile(s.path("bob"), readFile(t, s.path("alice")), 0o600)
	if _, _, err := s.Unlock("bob", "pw"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Unlock(bob with alice's file) = %v, want ErrCorrupt", err)
	}
}

func TestRemove(t *testing.T) {
	s := openTest(t)
	saveTest(t, s, "alice", "pw", testEntry())
	if err := s.Remove("ALICE"); err != nil {
		t.Fatalf("Remove() = %v", err)
	}
	if _, _, err := s.Unlock("alice", "pw"); !errors.Is(err, ErrNotSignedIn) {
		t.Errorf("Unlock() after Remove = %v, want ErrNotSignedIn", err)
	}
	if users, _ := s.List(); len(users) != 0 {
		t.Errorf("List() after Remove = %q", users)
	}
}

// TestConcurrentWriters checks that UpdateMeta's read-modify-write does not
// lose a concurrent Save (and vice versa).
func TestConcurrentWriters(t *testing.T) {
	s := openTest(t)
	k := saveTest(t, s, "alice", "pw", testEntry())
	var wg sync.WaitGroup
	const n = 20
	for i := range n {
		wg.Add(2)
		go func() {
			defer wg.Done()
			e := testEntry()
			e.Secret.RefreshToken = "RT-" + string(rune('a'+i))
			if err := s.Save("alice", k, e); err != nil {
				t.Errorf("Save() = %v", err)
			}
		}()
		go func() {
			defer wg.Done()
			if err := s.UpdateMeta("alice", func(m *Meta) { m.LastError = "e" }); err != nil {
				t.Errorf("UpdateMeta() = %v", err)
			}
		}()
	}
	wg.Wait()
	if _, _, err := s.Unlock("alice", "pw"); err != nil {
		t.Errorf("Unlock() after concurrent writes = %v", err)
	}
	des, _ := os.ReadDir(s.dir)
	for _, de := range des {
		if strings.HasSuffix(de.Name(), tempSuffix) {
			t.Errorf("temp file %s left behind", de.Name())
		}
	}
}

func TestLockExcludes(t *testing.T) {
	s := openTest(t)
	unlock, err := s.Lock("alice")
	if err != nil {
		t.Fatalf("Lock() = %v", err)
	}
	saved := make(chan error, 1)
	go func() {
		k, _ := s.NewKey("pw")
		saved <- s.Save("alice", k, testEntry())
	}()
	select {
	case err := <-saved:
		t.Fatalf("Save() returned %v while the lock was held", err)
	case <-time.After(50 * time.Millisecond):
	}
	unlock()
	unlock() // idempotent
	if err := <-saved; err != nil {
		t.Errorf("Save() after unlock = %v", err)
	}
}

func FuzzUnlock(f *testing.F) {
	dir := f.TempDir()
	s, err := Open(dir)
	if err != nil {
		f.Fatal(err)
	}
	s.KDF = testParams
	k, _ := s.NewKey("pw")
	if err := s.Save("alice", k, testEntry()); err != nil {
		f.Fatal(err)
	}
	good, _ := os.ReadFile(s.path("alice"))
	f.Add(good)
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(s.path("fuzz"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		// Must not panic nor allocate without bound; errors are fine.
		s.Unlock("fuzz", "pw")
		s.ReadMeta("fuzz")
	})
}

func BenchmarkUnlock(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	k, err := s.NewKey("pw") // DefaultParams: the real cost
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Save("alice", k, testEntry()); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := s.Unlock("alice", "pw"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkStamp(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	s.KDF = testParams
	k, _ := s.NewKey("pw")
	if err := s.Save("alice", k, testEntry()); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Stamp("alice"); err != nil {
			b.Fatal(err)
		}
	}
}

func TestUnlockWithKey(t *testing.T) {
	s := openTest(t)
	want := testEntry()
	k := saveTest(t, s, "alice@contoso.com", "pw1", want)
	got, err := s.UnlockWithKey("alice@contoso.com", k)
	if err != nil || !reflect.DeepEqual(got.Secret, want.Secret) {
		t.Fatalf("UnlockWithKey(saving key) = %v; want the saved secret", err)
	}
	// A new sign-in seals under a new salt: the old key no longer opens it.
	saveTest(t, s, "alice@contoso.com", "pw1", want)
	if _, err := s.UnlockWithKey("alice@contoso.com", k); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("UnlockWithKey(key of a replaced entry) = %v, want ErrBadCredentials", err)
	}
}
