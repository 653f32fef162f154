// Package cmdline builds the mailproxy command lines that hints tell an
// admin to run ("run mailproxy login -config /srv/mp.toml alice@contoso.com"),
// so that every hint — CLI output, the admin page, an IMAP [ALERT], an SMTP
// reply, the log — is a command that works when pasted on the machine the
// daemon runs on: with -config when the process was started with a file
// other than the platform's default, with mailproxy.exe and Windows quoting
// on Windows.
//
// What a hint should say depends on how this process was started, which is
// process-wide: cmd/mailproxy calls Set once it knows its config file, and
// every hint asks Command or Login. Until Set is called the commands carry
// no -config.
package cmdline

import (
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
)

// Invocation is how this process was started.
type Invocation struct {
	// GOOS is the platform the commands are for; "" means runtime.GOOS.
	GOOS string
	// Config is the config file this process runs with; "" means none
	// (the default).
	Config string
	// DefaultConfig is where mailproxy looks when -config is not given on
	// this platform (cmd/mailproxy's defaultConfigPath).
	DefaultConfig string
}

var current atomic.Pointer[Invocation]

// Set records how this process was started. A relative Config is made
// absolute, so that the command works from any directory.
func Set(inv Invocation) {
	if inv.GOOS == "" {
		inv.GOOS = runtime.GOOS
	}
	if inv.Config != "" && !isAbs(inv.GOOS, inv.Config) {
		if abs, err := filepath.Abs(inv.Config); err == nil {
			inv.Config = abs
		}
	}
	current.Store(&inv)
}

func get() Invocation {
	if p := current.Load(); p != nil {
		return *p
	}
	return Invocation{GOOS: runtime.GOOS}
}

// Command returns the command line that runs mailproxy's subcommand sub
// with args against this process's config, quoted for the platform's shell.
func Command(sub string, args ...string) string {
	return get().Command(sub, args...)
}

// Login is Command("login", user).
func Login(user string) string { return Command("login", user) }

// Expand puts the account into a hint written for "<user>": the command
// "mailproxy login <user>" becomes Login(user), with -config where needed,
// and any other "<user>" the username.
func Expand(hint, user string) string {
	hint = strings.ReplaceAll(hint, "mailproxy login <user>", Login(user))
	return strings.ReplaceAll(hint, "<user>", user)
}

// Command is the package-level Command for inv.
func (inv Invocation) Command(sub string, args ...string) string {
	windows := inv.GOOS == "windows"
	words := []string{"mailproxy"}
	if windows {
		words[0] = "mailproxy.exe"
	}
	words = append(words, sub)
	if inv.Config != "" && !samePath(windows, inv.Config, inv.DefaultConfig) {
		words = append(words, "-config", quote(windows, inv.Config))
	}
	for _, a := range args {
		words = append(words, quote(windows, a))
	}
	return strings.Join(words, " ")
}

func isAbs(goos, p string) bool {
	if goos == "windows" {
		return len(p) >= 3 && p[1] == ':' && (p[2] == '\\' || p[2] == '/') || strings.HasPrefix(p, `\\`)
	}
	return strings.HasPrefix(p, "/")
}

func samePath(windows bool, a, b string) bool {
	if b == "" {
		return false
	}
	if windows {
		return strings.EqualFold(strings.ReplaceAll(a, "/", `\`), strings.ReplaceAll(b, "/", `\`))
	}
	return filepath.Clean(a) == filepath.Clean(b)
}

// quote quotes s for a POSIX shell, or for PowerShell and cmd.exe on
// Windows, when it holds anything but the characters paths and addresses
// are usually made of.
func quote(windows bool, s string) string {
	safe := s != ""
	for _, r := range s {
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9':
		case strings.ContainsRune("@%+=:,./_-", r):
		case windows && r == '\\':
		default:
			safe = false
		}
	}
	if safe {
		return s
	}
	if windows {
		// Double quotes work in both PowerShell and cmd.exe; a path cannot
		// hold one.
		return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
