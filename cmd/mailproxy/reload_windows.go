//go:build windows

package main

import (
	"context"
	"fmt"

	"golang.org/x/sys/windows/svc"
)

// pidFile is not needed on Windows: reload goes through the service
// manager.
type pidFile struct{}

func writePIDFile(string) (*pidFile, error) { return nil, nil }
func (*pidFile) remove()                    {}

// runReload asks the mailproxy service to reload its config: Windows has no
// SIGHUP, so this sends the service control "parameters changed"
// (SERVICE_CONTROL_PARAMCHANGE, also `sc control mailproxy paramchange`).
// A serve started by hand in a console cannot be reloaded: restart it.
func runReload(_ context.Context, env *cmdEnv, args []string) error {
	fs := newFlags(env, "reload")
	_ = configFlag(env, fs) // accepted for symmetry: the service knows its config
	fs.Usage = func() {
		fmt.Fprint(env.stderr, `usage: mailproxy reload [-config FILE]

Asks the running mailproxy serve to reload its config, as SIGHUP does: on
Linux, macOS and the BSDs it signals the serve whose PID file is in the
config's state_dir (under systemd, systemctl reload mailproxy does the
same); on Windows it sends the mailproxy service the "parameters changed"
control. Live sessions stay. The daemon's log says whether the new config
was taken.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("reload takes no arguments")
	}
	m, err := connect()
	if err != nil {
		return err
	}
	defer m.Disconnect()
	s, err := m.OpenService(serviceName)
	if err != nil {
		return fmt.Errorf("service %s is not installed: a mailproxy serve in a console reloads by restarting it", serviceName)
	}
	defer s.Close()
	if _, err := s.Control(svc.ParamChange); err != nil {
		return fmt.Errorf("ask service %s to reload: %w (is it running? mailproxy service start)", serviceName, err)
	}
	fmt.Fprintf(env.stdout, "asked service %s to reload: its log says whether the new config was taken\n", serviceName)
	return nil
}
