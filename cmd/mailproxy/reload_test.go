//go:build !windows

package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

// The Windows service turns the service manager's ParamChange into a
// reload request; serve must reload as it does on SIGHUP.
func TestServiceReloadRequest(t *testing.T) {
	h := startServe(t)
	next := strings.Replace(h.cfgText, "[[account]]", "[[account]]\nmailbox = \"\"", 1)
	if err := writeFile(h.cfgFile, next); err != nil {
		t.Fatal(err)
	}
	h.reloadReq <- struct{}{}
	select {
	case err := <-h.reloads:
		if err != nil {
			t.Errorf("reload after a reload request = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no reload within 10s of the request")
	}
	// A broken config is refused and the daemon keeps serving.
	if err := writeFile(h.cfgFile, "bogus = 1\n"); err != nil {
		t.Fatal(err)
	}
	h.reloadReq <- struct{}{}
	select {
	case err := <-h.reloads:
		if err == nil || !strings.Contains(err.Error(), "bogus") {
			t.Errorf("reload of a bad config = %v, want an error naming the key", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no reload within 10s of the request")
	}
}

func writeFile(path, text string) error { return os.WriteFile(path, []byte(text), 0o600) }
