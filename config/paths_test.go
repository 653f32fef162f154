package config

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

func TestDefaultPathPerPlatform(t *testing.T) {
	tests := []struct {
		goos string
		env  map[string]string
		home string
		want string
	}{
		{"linux", nil, "/home/a", "/etc/mailproxy/mailproxy.toml"},
		{"linux", map[string]string{"CONFIGURATION_DIRECTORY": "/etc/mp:/etc/other"}, "/home/a", "/etc/mp/mailproxy.toml"},
		{"freebsd", nil, "/home/a", "/etc/mailproxy/mailproxy.toml"},
		{"windows", map[string]string{"ProgramData": `D:\Data`}, `C:\Users\a`, `D:\Data\mailproxy\mailproxy.toml`},
		{"windows", nil, `C:\Users\a`, `C:\ProgramData\mailproxy\mailproxy.toml`},
		{"darwin", nil, "/Users/a", "/Users/a/Library/Application Support/mailproxy/mailproxy.toml"},
		{"darwin", nil, "", "/etc/mailproxy/mailproxy.toml"},
	}
	for _, tt := range tests {
		getenv := func(k string) string { return tt.env[k] }
		if got := defaultPath(tt.goos, getenv, tt.home); got != tt.want {
			t.Errorf("defaultPath(%s, %v, %q) = %q, want %q", tt.goos, tt.env, tt.home, got, tt.want)
		}
	}
}

func TestStateDirPerPlatform(t *testing.T) {
	tests := []struct {
		goos  string
		env   map[string]string
		home  string
		owned bool // SystemStateDir exists and is ours
		want  string
	}{
		{"linux", map[string]string{"STATE_DIRECTORY": "/var/lib/x:/var/lib/y"}, "/h", true, "/var/lib/x"},
		{"linux", nil, "/h", true, SystemStateDir},
		{"linux", nil, "/h", false, "/h/.local/state/mailproxy"},
		{"linux", map[string]string{"XDG_STATE_HOME": "/xdg"}, "/h", false, "/xdg/mailproxy"},
		{"linux", map[string]string{"XDG_STATE_HOME": "rel"}, "/h", false, "/h/.local/state/mailproxy"},
		{"linux", nil, "", false, ""},
		{"windows", map[string]string{"ProgramData": `C:\ProgramData`}, `C:\Users\a`, false, `C:\ProgramData\mailproxy`},
		{"darwin", nil, "/Users/a", false, "/Users/a/Library/Application Support/mailproxy"},
	}
	for _, tt := range tests {
		getenv := func(k string) string { return tt.env[k] }
		var asked string
		owned := func(d string) bool { asked = d; return tt.owned }
		got := stateDirFor(tt.goos, getenv, tt.home, owned)
		if got != tt.want {
			t.Errorf("stateDirFor(%s, %v, %q, owned=%v) = %q, want %q", tt.goos, tt.env, tt.home, tt.owned, got, tt.want)
		}
		if asked != "" && asked != SystemStateDir {
			t.Errorf("stateDirFor asked about %q, want %q", asked, SystemStateDir)
		}
	}
}

// DefaultPath is what this platform's binary uses; on the machine running
// the test it must agree with the table above.
func TestDefaultPathHere(t *testing.T) {
	t.Setenv("CONFIGURATION_DIRECTORY", "")
	home, _ := os.UserHomeDir()
	want := defaultPath(runtime.GOOS, os.Getenv, home)
	if got := DefaultPath(nil); got != want {
		t.Errorf("DefaultPath(nil) = %q, want %q", got, want)
	}
	if got := DefaultPath(func(k string) string {
		if k == "CONFIGURATION_DIRECTORY" {
			return filepath.Join("x", "conf")
		}
		return ""
	}); got != filepath.Join("x", "conf", "mailproxy.toml") {
		t.Errorf("DefaultPath(CONFIGURATION_DIRECTORY=x/conf) = %q, want %q", got, filepath.Join("x", "conf", "mailproxy.toml"))
	}
}

func TestLogFile(t *testing.T) {
	cfg := mustParse(t, "[log]\nfile = \"logs/mailproxy.log\"\n"+provider, "/etc/mailproxy")
	if want := filepath.Join("/etc/mailproxy", "logs", "mailproxy.log"); cfg.Log.File != want {
		t.Errorf("Log.File = %q, want %q", cfg.Log.File, want)
	}
	if cfg := mustParse(t, provider, "/etc/mailproxy"); cfg.Log.File != "" {
		t.Errorf("Log.File without the key = %q, want \"\"", cfg.Log.File)
	}
}
