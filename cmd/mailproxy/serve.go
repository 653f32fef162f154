package main

import (
	"context"
	"log/slog"

	"mailproxy/daemon"
)

func runServe(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlags(env, "serve")
	cfgPath := configFlag(env, fs)
	debug := fs.Bool("debug", false, "log protocol steps at debug level (credentials and tokens are never logged)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("serve takes no arguments")
	}
	cfg, err := loadConfig(*cfgPath)
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
	if env.serving != nil {
		hooks.Serving = func() { env.serving(d) }
	}
	return d.Run(ctx, *cfgPath, hooks)
}
