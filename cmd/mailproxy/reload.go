package main

import "fmt"

const reloadHelp = `usage: mailproxy reload [-config FILE]

Asks the running mailproxy serve to reload its config, as SIGHUP does: on
Linux, macOS and the BSDs it signals the serve whose PID file is in the
config's state_dir (under systemd, systemctl reload mailproxy does the
same); on Windows it sends the mailproxy service the "parameters changed"
control. Live sessions stay. The daemon's log says whether the new config
was taken.

Flags:
`

// parseReloadFlags reads reload's flags, the same on every system, and
// returns the config path.
func parseReloadFlags(env *cmdEnv, args []string) (string, error) {
	fs := newFlags(env, "reload")
	cfgPath := configFlag(env, fs)
	fs.Usage = func() {
		fmt.Fprint(env.stderr, reloadHelp)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return "", err
	}
	if fs.NArg() > 0 {
		return "", usagef("reload takes no arguments")
	}
	return *cfgPath, nil
}
