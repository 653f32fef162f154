package main

import (
	"flag"
	"io"
	"log/slog"
	"strings"

	"mailproxy/config"
	"mailproxy/daemon"
	"mailproxy/internal/cmdline"
	"mailproxy/oauth"
	"mailproxy/oauth/store"
)

// defaultConfigPath is where serve, login, status and check look when
// -config is not given: config.DefaultPath, per platform.
func defaultConfigPath(env *cmdEnv) string {
	return config.DefaultPath(env.getenv)
}

// configFlag registers -config on fs.
func configFlag(env *cmdEnv, fs *flag.FlagSet) *string {
	return fs.String("config", defaultConfigPath(env), "config `file`")
}

// loadConfig loads and validates the config; its errors exit with status 2.
// The hints this process prints name the file (package cmdline).
func loadConfig(env *cmdEnv, path string) (*config.Config, error) {
	cmdline.Set(cmdline.Invocation{Config: path, DefaultConfig: defaultConfigPath(env)})
	cfg, err := config.Load(path)
	if err != nil {
		return nil, usageError{err}
	}
	return cfg, nil
}

// loadConfigFlags parses the flags of a subcommand that takes no
// arguments and loads the config its -config names.
func loadConfigFlags(env *cmdEnv, fs *flag.FlagSet, cfgPath *string, args []string) (*config.Config, error) {
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, usagef("%s takes no arguments", strings.TrimPrefix(fs.Name(), "mailproxy "))
	}
	return loadConfig(env, *cfgPath)
}

// newLogger returns the logger the config asks for, writing to w.
func newLogger(cfg *config.Config, w io.Writer, debug bool) *slog.Logger {
	level := cfg.Log.Level
	if debug {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Log.Format == config.LogJSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// newManager opens the store and registers every delegated account.
func newManager(cfg *config.Config, logger *slog.Logger) (*oauth.Manager, *store.Store, error) {
	st, err := daemon.OpenStore(cfg)
	if err != nil {
		return nil, nil, err
	}
	m := oauth.NewManager(st, logger)
	daemon.RegisterAccounts(m, cfg, daemon.Providers())
	return m, st, nil
}

// discardLogger is for commands that print their own output.
func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
