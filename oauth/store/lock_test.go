package store

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The helper process of TestLockAcrossProcesses: it takes the lock of the
// file named by the environment, says so on stdout and holds it until its
// stdin closes.
func init() {
	path := os.Getenv("MAILPROXY_STORE_LOCK_HELPER")
	if path == "" {
		return
	}
	f, err := lockFile(path)
	if err != nil {
		os.Stdout.WriteString("error: " + err.Error() + "\n")
		os.Exit(1)
	}
	os.Stdout.WriteString("locked\n")
	io.Copy(io.Discard, os.Stdin)
	unlockFile(f)
	os.Exit(0)
}

// A lock another process holds (a running serve while `login` saves) keeps
// this process out until it is released.
func TestLockAcrossProcesses(t *testing.T) {
	if !fileLocks {
		t.Skip("no file locks on this system")
	}
	path := filepath.Join(t.TempDir(), "alice.lock")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "MAILPROXY_STORE_LOCK_HELPER="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if line != "locked\n" {
		t.Fatalf("helper process said %q (%v), want \"locked\"", line, err)
	}
	if ok, err := tryLock(path); err != nil || ok {
		t.Fatalf("tryLock(%s) while another process holds it = %v, %v, want false, nil", path, ok, err)
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper process: %v", err)
	}
	if ok, err := tryLock(path); err != nil || !ok {
		t.Errorf("tryLock(%s) after the other process let go = %v, %v, want true, nil", path, ok, err)
	}
}

// Two handles in one process exclude each other too: serve's refresh and
// the admin page's sign-in run in the same process.
func TestLockExcludesOtherHandles(t *testing.T) {
	if !fileLocks {
		t.Skip("no file locks on this system")
	}
	path := filepath.Join(t.TempDir(), "bob.lock")
	f, err := lockFile(path)
	if err != nil {
		t.Fatalf("lockFile(%s) = %v", path, err)
	}
	if ok, err := tryLock(path); err != nil || ok {
		t.Errorf("tryLock(%s) on a second handle = %v, %v, want false, nil", path, ok, err)
	}
	unlockFile(f)
	if ok, err := tryLock(path); err != nil || !ok {
		t.Errorf("tryLock(%s) after unlock = %v, %v, want true, nil", path, ok, err)
	}
}
