package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"

	"mailproxy/daemon"
)

func runServe(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlags(env, "serve")
	cfgPath := configFlag(env, fs)
	debug := fs.Bool("debug", false, "log protocol steps at debug level (credentials and tokens are never logged)")
	fs.Usage = func() {
		fmt.Fprint(env.stderr, `usage: mailproxy serve [-config FILE] [-debug]

Runs the proxy: listens for IMAP and SMTP (and the admin page) as the config
says, and relays every client that logs in with its local password to
Microsoft 365 or Gmail with the account's OAuth token. Logs go to standard
error (or log.file). SIGHUP reloads the config without dropping sessions;
SIGTERM or Ctrl-C drains and stops. Exits 2 on a bad config, 1 when a
listener cannot be bound or fails.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("serve takes no arguments")
	}
	cfg, err := loadConfig(env, *cfgPath)
	if err != nil {
		return err
	}
	if cfg.Log.File == "" {
		cfg.Log.File = env.defaultLogFile
	}
	logger, closeLog, err := daemonLogger(cfg, env.stderr, *debug, env.sysLog)
	if err != nil {
		return err
	}
	defer closeLog()
	pid, err := writePIDFile(cfg.StateDir)
	if err != nil {
		// mailproxy reload will not find this daemon; it runs anyway.
		logger.Warn("no pid file: mailproxy reload cannot reach this process", "err", err)
	}
	defer pid.remove()
	d, err := daemon.New(cfg, logger)
	if err != nil {
		return err
	}
	if *debug || cfg.Log.Level <= slog.LevelDebug {
		d.SetTrace(logger)
	}
	hooks := daemon.Hooks{
		Ready:      notifyReady,
		Reloading:  notifyReloading,
		Stopping:   notifyStopping,
		ReloadDone: env.reloadDone,
		Reload:     env.reload,
	}
	hooks.Serving = func() {
		logStart(logger, d, *cfgPath)
		if env.serving != nil {
			env.serving(d)
		}
	}
	return d.Run(ctx, *cfgPath, hooks)
}

// logStart says, once the listeners are bound, what is running: the
// version, the config file, how many accounts and where it listens.
func logStart(logger *slog.Logger, d *daemon.Daemon, cfgPath string) {
	ver, rev := buildVersion()
	var listeners []string
	for _, name := range d.ListenerNames() {
		if a := d.Addr(name); a != nil {
			listeners = append(listeners, name+"="+a.String())
		}
	}
	if abs, err := filepath.Abs(cfgPath); err == nil {
		cfgPath = abs
	}
	cfg := d.Config()
	logger.Info("mailproxy started", "version", ver, "commit", rev, "config", cfgPath,
		"accounts", len(cfg.Accounts), "providers", len(cfg.Providers), "listeners", strings.Join(listeners, " "))
}
