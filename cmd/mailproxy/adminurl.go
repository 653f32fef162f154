package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"mailproxy/admin"
)

const adminURLHelp = `usage: mailproxy admin-url [-config FILE]

Prints the link that opens the admin page. Without admin.password_hash the
page needs an access token that mailproxy keeps in state_dir/admin-token
(created on first use, mode 0600); the link carries it and the browser
trades it for a session cookie. Run it as the user mailproxy runs as (for
the packaged service: sudo -u mailproxy mailproxy admin-url). The link is a
secret: whoever has it can sign accounts in and out.`

func runAdminURL(_ context.Context, env *cmdEnv, args []string) error {
	flags := newFlags(env, "admin-url")
	cfgPath := configFlag(env, flags)
	flags.Usage = func() { fmt.Fprintln(env.stderr, adminURLHelp) }
	if err := parseFlags(flags, args); err != nil {
		return err
	}
	if flags.NArg() > 0 {
		return usagef("admin-url takes no arguments")
	}
	cfg, err := loadConfig(env, *cfgPath)
	if err != nil {
		return err
	}
	if cfg.Admin.Listen == "" {
		return errors.New("the admin page is off (admin.listen is empty)")
	}
	if cfg.Admin.PasswordHash != "" {
		fmt.Fprintln(env.stdout, admin.AccessURL(cfg.Admin.Listen, cfg.AdminTLS(), ""))
		fmt.Fprintln(env.stderr, "The page asks for the admin password (admin.password_hash).")
		return nil
	}
	tok, err := admin.LoadAccessToken(cfg.StateDir)
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("%w; run admin-url as the user mailproxy runs as", err)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(env.stdout, admin.AccessURL(cfg.Admin.Listen, cfg.AdminTLS(), tok))
	return nil
}
