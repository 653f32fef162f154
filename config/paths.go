package config

import (
	"errors"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
)

// Where mailproxy keeps its files when the command line and the config do
// not say. One place for every platform:
//
//	             config file                                   state_dir
//	Linux, BSD   /etc/mailproxy/mailproxy.toml                 /var/lib/mailproxy (when it is ours),
//	                                                           else ~/.local/state/mailproxy
//	Windows      %ProgramData%\mailproxy\mailproxy.toml        %ProgramData%\mailproxy
//	macOS        ~/Library/Application Support/mailproxy/mailproxy.toml   (same directory)
//
// systemd's $CONFIGURATION_DIRECTORY and $STATE_DIRECTORY come first
// wherever they are set.

// SystemStateDir is the state directory of a packaged install on Linux and
// the BSDs (the .deb and .rpm create it for the mailproxy user).
const SystemStateDir = "/var/lib/mailproxy"

// DefaultPath returns the config file that serve, login, status, check and
// reload read when -config is not given. getenv nil means os.Getenv.
// Hints compare a path with it to decide whether to print -config.
func DefaultPath(getenv func(string) string) string {
	if getenv == nil {
		getenv = os.Getenv
	}
	home, _ := os.UserHomeDir()
	return defaultPath(runtime.GOOS, getenv, home)
}

func defaultPath(goos string, getenv func(string) string, home string) string {
	if d := getenv("CONFIGURATION_DIRECTORY"); d != "" {
		first, _, _ := strings.Cut(d, ":") // systemd joins several with ':'
		return join(goos, first, "mailproxy.toml")
	}
	switch goos {
	case "windows":
		return join(goos, programData(getenv), "mailproxy", "mailproxy.toml")
	case "darwin":
		if home != "" {
			return join(goos, home, "Library", "Application Support", "mailproxy", "mailproxy.toml")
		}
	}
	return "/etc/mailproxy/mailproxy.toml"
}

// defaultStateDir is where the token store lives when state_dir is not set.
func defaultStateDir() (string, error) {
	home, herr := os.UserHomeDir()
	d := stateDirFor(runtime.GOOS, os.Getenv, home, ownedByUs)
	if d == "" {
		if herr == nil {
			herr = errors.New("no home directory")
		}
		return "", herr
	}
	return d, nil
}

// stateDirFor is defaultStateDir for a given platform; owned reports whether
// a directory exists and belongs to this process's user.
func stateDirFor(goos string, getenv func(string) string, home string, owned func(string) bool) string {
	if s := getenv("STATE_DIRECTORY"); s != "" {
		first, _, _ := strings.Cut(s, ":")
		return first
	}
	switch goos {
	case "windows":
		// Shared by the service and an administrator's `mailproxy
		// login`; the service installer restricts its ACL.
		return join(goos, programData(getenv), "mailproxy")
	case "darwin":
		if home == "" {
			return ""
		}
		return join(goos, home, "Library", "Application Support", "mailproxy")
	}
	// A packaged install: `sudo -u mailproxy mailproxy login` must find
	// the service's store without -config tricks.
	if owned(SystemStateDir) {
		return SystemStateDir
	}
	if d := getenv("XDG_STATE_HOME"); path.IsAbs(d) {
		return join(goos, d, "mailproxy")
	}
	if home == "" {
		return ""
	}
	return join(goos, home, ".local", "state", "mailproxy")
}

// programData is %ProgramData%, C:\ProgramData when it is not set.
func programData(getenv func(string) string) string {
	if d := getenv("ProgramData"); d != "" {
		return d
	}
	if d := getenv("PROGRAMDATA"); d != "" {
		return d
	}
	return `C:\ProgramData`
}

// join joins path elements with goos's separator, so that tests on one
// platform can check another's paths.
func join(goos string, elem ...string) string {
	if goos == runtime.GOOS {
		return filepath.Join(elem...)
	}
	if goos == "windows" {
		for i := range elem {
			elem[i] = strings.TrimRight(elem[i], `\`)
		}
		return strings.Join(elem, `\`)
	}
	return path.Join(elem...)
}
