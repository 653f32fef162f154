package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// Set with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = ""
	commit  = ""
)

// buildVersion fills what -ldflags did not set from the build information
// the Go toolchain embeds.
func buildVersion() (ver, rev string) {
	ver, rev = version, commit
	info, ok := debug.ReadBuildInfo()
	if ok {
		if ver == "" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			ver = info.Main.Version
		}
		if rev == "" {
			for _, s := range info.Settings {
				if s.Key == "vcs.revision" {
					rev = s.Value
					if len(rev) > 12 {
						rev = rev[:12]
					}
				}
			}
			for _, s := range info.Settings {
				if s.Key == "vcs.modified" && s.Value == "true" && rev != "" {
					rev += "-dirty"
				}
			}
		}
	}
	if ver == "" {
		ver = "devel"
	}
	if rev == "" {
		rev = "unknown"
	}
	return ver, rev
}

func printVersion(w io.Writer) {
	ver, rev := buildVersion()
	fmt.Fprintf(w, "mailproxy %s (commit %s, %s, %s/%s)\n", ver, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func runVersion(_ context.Context, env *cmdEnv, args []string) error {
	fs := newFlags(env, "version")
	fs.Usage = func() {
		fmt.Fprint(env.stderr, `usage: mailproxy version   (or mailproxy --version)

Prints the version, the commit it was built from, the Go version and the
platform, on one line. Release builds set the version at link time; other
builds take it from the module and VCS information Go embeds.
`)
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("version takes no arguments")
	}
	printVersion(env.stdout)
	return nil
}
