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
	logger := newLogger(cfg, env.stderr, *debug)
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
	}
	if env.serving != nil {
		hooks.Serving = func() { env.serving(d) }
	}
	return d.Run(ctx, *cfgPath, hooks)
}
