//go:build windows

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/windows"
	"golang.org/x/sys/windows/svc"
	"golang.org/x/sys/windows/svc/eventlog"
	"golang.org/x/sys/windows/svc/mgr"
)

// serviceName is the Windows service and its Event Log source. The MSI
// registers the same name (packaging/windows/mailproxy.wxs).
const serviceName = "mailproxy"

// Event IDs in the Application log (EventCreate.exe messages take 1-1000).
const (
	eventStarted = 1
	eventStopped = 2
	eventError   = 3
)

// Service timing: how long stop waits for the drain (shutdown_timeout is
// 30s by default), and how long start and stop wait for the state change.
const (
	serviceStopHint = 45 * time.Second
	serviceWait     = 60 * time.Second
	servicePoll     = 250 * time.Millisecond
)

// runAsService runs args (serve -config FILE, as `service install` and the
// MSI register it) under the service manager when the process was started
// by it; ok is false otherwise.
func runAsService(env *cmdEnv, args []string) (code int, ok bool) {
	if is, err := svc.IsWindowsService(); err != nil || !is {
		return 0, false
	}
	sink := openEventLog()
	h := &serviceHandler{
		log: sink,
		run: func(ctx context.Context, reload <-chan struct{}) int {
			env.sysLog = sink
			env.reload = reload
			// A service has no stderr: the log goes to a file unless the
			// config names one, and what run prints to stderr (the reason
			// serve could not start) goes to the Event Log.
			env.stdout = eventWriter{sink}
			env.stderr = eventWriter{sink}
			env.defaultLogFile = filepath.Join(filepath.Dir(defaultConfigPath(env)), "mailproxy.log")
			return run(ctx, env, args)
		},
	}
	if err := svc.Run(serviceName, h); err != nil {
		sink.Error(fmt.Sprintf("mailproxy service: %v", err))
		return exitFailure, true
	}
	return h.code, true
}

// serviceHandler answers the service manager: Stop and Shutdown cancel
// serve's context, which drains as SIGTERM does on Linux; ParamChange
// (`mailproxy reload`, `sc control mailproxy paramchange`) reloads the
// config as SIGHUP does.
type serviceHandler struct {
	run  func(ctx context.Context, reload <-chan struct{}) int
	log  eventSink
	code int // run's exit status
}

func (h *serviceHandler) Execute(_ []string, r <-chan svc.ChangeRequest, s chan<- svc.Status) (bool, uint32) {
	const accepts = svc.AcceptStop | svc.AcceptShutdown | svc.AcceptParamChange
	s <- svc.Status{State: svc.StartPending}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reload := make(chan struct{}, 1)
	done := make(chan int, 1)
	go func() { done <- h.run(ctx, reload) }()
	running := svc.Status{State: svc.Running, Accepts: accepts}
	s <- running
	h.log.Info("mailproxy service started")
	for {
		select {
		case code := <-done:
			h.code = code
			if code != exitOK {
				h.log.Error(fmt.Sprintf("mailproxy service stopped with exit status %d (2: the config is wrong; see the messages above and the log file)", code))
				s <- svc.Status{State: svc.StopPending}
				return true, uint32(code)
			}
			h.log.Info("mailproxy service stopped")
			s <- svc.Status{State: svc.StopPending}
			return false, 0
		case c := <-r:
			switch c.Cmd {
			case svc.Interrogate:
				s <- c.CurrentStatus
			case svc.Stop, svc.Shutdown:
				s <- svc.Status{State: svc.StopPending, WaitHint: uint32(serviceStopHint / time.Millisecond)}
				cancel()
			case svc.ParamChange:
				select {
				case reload <- struct{}{}:
				default: // one is pending already
				}
				s <- running
			}
		}
	}
}

// eventLog is the Event Log source, behind eventSink.
type eventLog struct{ l *eventlog.Log }

func (e eventLog) Info(m string) error    { return e.l.Info(eventStarted, m) }
func (e eventLog) Warning(m string) error { return e.l.Warning(eventError, m) }
func (e eventLog) Error(m string) error   { return e.l.Error(eventError, m) }

// openEventLog opens the Application log source, registering it first when
// the MSI or `service install` did not (the service runs as LocalSystem,
// which may). Without an Event Log the service still runs.
func openEventLog() eventSink {
	// Registered by the installer already, or not allowed: Open works
	// either way.
	eventlog.InstallAsEventCreate(serviceName, eventlog.Error|eventlog.Warning|eventlog.Info)
	l, err := eventlog.Open(serviceName)
	if err != nil {
		return discardSink{}
	}
	return eventLog{l}
}

type discardSink struct{}

func (discardSink) Info(string) error    { return nil }
func (discardSink) Warning(string) error { return nil }
func (discardSink) Error(string) error   { return nil }

// eventWriter sends what run prints to the Event Log, as errors.
type eventWriter struct{ sink eventSink }

func (w eventWriter) Write(p []byte) (int, error) {
	if m := strings.TrimSpace(string(p)); m != "" {
		w.sink.Error(m)
	}
	return len(p), nil
}

// runService is `mailproxy service install|uninstall|start|stop`.
func runService(_ context.Context, env *cmdEnv, args []string) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Fprintln(env.stderr, serviceHelp)
		return flag.ErrHelp
	}
	if len(args) == 0 {
		return usagef("service needs one of install, uninstall, start, stop")
	}
	verb := args[0]
	fs := newFlags(env, "service "+verb)
	cfgPath := configFlag(env, fs)
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("service %s takes no arguments", verb)
	}
	switch verb {
	case "install":
		return serviceInstall(env, *cfgPath)
	case "uninstall":
		return serviceUninstall(env)
	case "start":
		return serviceStart(env)
	case "stop":
		return serviceStop(env)
	}
	return usagef("service %q: use install, uninstall, start or stop", verb)
}

func connect() (*mgr.Mgr, error) {
	m, err := mgr.Connect()
	if err != nil {
		if errors.Is(err, windows.ERROR_ACCESS_DENIED) {
			return nil, fmt.Errorf("the service manager refused access: run this from an elevated (Administrator) prompt")
		}
		return nil, fmt.Errorf("connect to the service manager: %w", err)
	}
	return m, nil
}

// serviceInstall registers `mailproxy.exe serve -config FILE` as an
// automatic service running as LocalSystem, restarted on failure. It does
// not start it: the config must be filled in and accounts signed in first.
func serviceInstall(env *cmdEnv, cfgPath string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(cfgPath)
	if err != nil {
		return err
	}
	m, err := connect()
	if err != nil {
		return err
	}
	defer m.Disconnect()
	if s, err := m.OpenService(serviceName); err == nil {
		s.Close()
		return fmt.Errorf("service %s is installed already (mailproxy service uninstall first)", serviceName)
	}
	s, err := m.CreateService(serviceName, exe, mgr.Config{
		DisplayName:      "mailproxy",
		Description:      "Plain IMAP/SMTP logins relayed to Microsoft 365 with OAuth 2.0",
		StartType:        mgr.StartAutomatic,
		DelayedAutoStart: true,
	}, "serve", "-config", abs)
	if err != nil {
		return fmt.Errorf("create service: %w", err)
	}
	defer s.Close()
	// Restart after a crash or a failed exit, as Restart=on-failure does.
	restart := []mgr.RecoveryAction{
		{Type: mgr.ServiceRestart, Delay: 5 * time.Second},
		{Type: mgr.ServiceRestart, Delay: 30 * time.Second},
		{Type: mgr.ServiceRestart, Delay: 2 * time.Minute},
	}
	if err := s.SetRecoveryActions(restart, uint32((24 * time.Hour).Seconds())); err != nil {
		fmt.Fprintf(env.stderr, "warning: restart on failure not set: %v\n", err)
	} else if err := s.SetRecoveryActionsOnNonCrashFailures(true); err != nil {
		fmt.Fprintf(env.stderr, "warning: restart on a failed exit not set: %v\n", err)
	}
	if err := eventlog.InstallAsEventCreate(serviceName, eventlog.Error|eventlog.Warning|eventlog.Info); err != nil && !strings.Contains(err.Error(), "exists") {
		fmt.Fprintf(env.stderr, "warning: Event Log source not registered: %v\n", err)
	}
	fmt.Fprintf(env.stdout, "installed service %s: %s serve -config %s\n", serviceName, exe, abs)
	if _, err := os.Stat(abs); err != nil {
		fmt.Fprintf(env.stdout, "%s does not exist yet: create it (from config.example.toml), sign accounts in, then:\n", abs)
	} else {
		fmt.Fprintf(env.stdout, "sign accounts in (mailproxy login), then:\n")
	}
	fmt.Fprintf(env.stdout, "  mailproxy service start\n")
	return nil
}

// withService runs do on the installed mailproxy service. Without one it
// says so, followed by hint.
func withService(hint string, do func(s *mgr.Service) error) error {
	m, err := connect()
	if err != nil {
		return err
	}
	defer m.Disconnect()
	s, err := m.OpenService(serviceName)
	if err != nil {
		return errors.New("service " + serviceName + " is not installed" + hint)
	}
	defer s.Close()
	return do(s)
}

func serviceUninstall(env *cmdEnv) error {
	return withService("", func(s *mgr.Service) error {
		if st, err := s.Query(); err == nil && st.State != svc.Stopped {
			if err := stopAndWait(s); err != nil {
				return err
			}
		}
		if err := s.Delete(); err != nil {
			return fmt.Errorf("delete service: %w", err)
		}
		eventlog.Remove(serviceName)
		fmt.Fprintf(env.stdout, "removed service %s; the config and the token store are left in place\n", serviceName)
		return nil
	})
}

func serviceStart(env *cmdEnv) error {
	return withService(" (mailproxy service install)", func(s *mgr.Service) error {
		if err := s.Start(); err != nil {
			return fmt.Errorf("start service: %w", err)
		}
		st, err := waitState(s, svc.Running)
		if err != nil {
			return err
		}
		if st.State != svc.Running {
			return fmt.Errorf("service %s stopped at start (exit status %d): the Event Log (source mailproxy) says why", serviceName, st.ServiceSpecificExitCode)
		}
		fmt.Fprintf(env.stdout, "service %s is running\n", serviceName)
		return nil
	})
}

func serviceStop(env *cmdEnv) error {
	return withService("", func(s *mgr.Service) error {
		if err := stopAndWait(s); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "service %s is stopped\n", serviceName)
		return nil
	})
}

func stopAndWait(s *mgr.Service) error {
	if _, err := s.Control(svc.Stop); err != nil && !errors.Is(err, windows.ERROR_SERVICE_NOT_ACTIVE) {
		return fmt.Errorf("stop service: %w", err)
	}
	st, err := waitState(s, svc.Stopped)
	if err != nil {
		return err
	}
	if st.State != svc.Stopped {
		return fmt.Errorf("service %s did not stop within %v", serviceName, serviceWait)
	}
	return nil
}

// waitState polls until the service reaches want or stops, up to
// serviceWait; the service manager has no wait call.
func waitState(s *mgr.Service, want svc.State) (svc.Status, error) {
	deadline := time.Now().Add(serviceWait)
	for {
		st, err := s.Query()
		if err != nil {
			return st, fmt.Errorf("query service: %w", err)
		}
		if st.State == want || st.State == svc.Stopped || time.Now().After(deadline) {
			return st, nil
		}
		time.Sleep(servicePoll)
	}
}
