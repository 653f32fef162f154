//go:build !windows

package main

import "context"

// runAsService runs nothing here: only Windows has a service manager that
// starts programs through its own entry point (systemd and launchd run
// `mailproxy serve` as it is).
func runAsService(*cmdEnv, []string) (int, bool) { return 0, false }

func runService(_ context.Context, env *cmdEnv, args []string) error {
	return usagef("service manages the Windows service; on Linux use systemd (systemctl enable --now mailproxy), on macOS launchd (docs/INSTALL.md)")
}
