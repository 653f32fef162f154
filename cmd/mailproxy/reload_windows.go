//go:build windows

package main

import (
	"context"
	"fmt"

	"golang.org/x/sys/windows/svc"
	"golang.org/x/sys/windows/svc/mgr"
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
	// -config is accepted for symmetry: the service knows its config.
	if _, err := parseReloadFlags(env, args); err != nil {
		return err
	}
	return withService(": a mailproxy serve in a console reloads by restarting it", func(s *mgr.Service) error {
		if _, err := s.Control(svc.ParamChange); err != nil {
			return fmt.Errorf("ask service %s to reload: %w (is it running? mailproxy service start)", serviceName, err)
		}
		fmt.Fprintf(env.stdout, "asked service %s to reload: its log says whether the new config was taken\n", serviceName)
		return nil
	})
}
