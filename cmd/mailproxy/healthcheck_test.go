package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHealthcheck(t *testing.T) {
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
		w.Write([]byte("imap down\n"))
	}))
	defer srv.Close()
	// From the config's admin.listen, as the container's HEALTHCHECK asks.
	cfg := filepath.Join(t.TempDir(), "mailproxy.toml")
	host := strings.TrimPrefix(srv.URL, "http://")
	if err := os.WriteFile(cfg, []byte("state_dir = \"state\"\n[admin]\nlisten = \""+host+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	check := func(args ...string) (int, string) {
		var out, errOut bytes.Buffer
		env := &cmdEnv{stdout: &out, stderr: &errOut, getenv: func(string) string { return "" }}
		code := run(context.Background(), env, append([]string{"healthcheck"}, args...))
		return code, out.String() + errOut.String()
	}
	if code, out := check("-config", cfg); code != exitOK || !strings.Contains(out, "ok: "+srv.URL+"/healthz") {
		t.Errorf("healthcheck -config = %d, %q, want 0 and ok", code, out)
	}
	status = http.StatusServiceUnavailable
	if code, out := check("-url", srv.URL+"/healthz"); code != exitFailure || !strings.Contains(out, "503") {
		t.Errorf("healthcheck on a 503 = %d, %q, want 1 naming the status", code, out)
	}
	srv.Close()
	if code, _ := check("-config", cfg); code != exitFailure {
		t.Errorf("healthcheck with nothing listening = %d, want 1", code)
	}
	if err := os.WriteFile(cfg, []byte("[admin]\nlisten = \"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out := check("-config", cfg); code != exitUsage || !strings.Contains(out, "admin.listen") {
		t.Errorf("healthcheck with admin.listen off = %d, %q, want 2 naming admin.listen", code, out)
	}
}
