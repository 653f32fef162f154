//go:build !windows

package main

import (
	"context"
	"flag"
	"fmt"
)

// runAsService runs nothing here: only Windows has a service manager that
// starts programs through its own entry point (systemd and launchd run
// `mailproxy serve` as it is).
func runAsService(*cmdEnv, []string) (int, bool) { return 0, false }

func runService(_ context.Context, env *cmdEnv, args []string) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Fprintln(env.stderr, serviceHelp)
		return flag.ErrHelp
	}
	return usagef("service manages the Windows service; on Linux use systemd (systemctl enable --now mailproxy), on macOS launchd (docs/INSTALL.md)")
}
