// Command mailproxy accepts plain IMAP and SMTP logins from legacy clients
// and relays the sessions to Microsoft 365 (or Gmail) with OAuth 2.0 XOAUTH2.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"mailproxy/daemon"
	"os"
	"os/signal"
	"syscall"
)

const usage = `mailproxy: plain IMAP/SMTP logins in, OAuth 2.0 (XOAUTH2) out.

Usage:
  mailproxy serve   [-config FILE] [-debug]   run the proxy
  mailproxy demo                              run against a built-in fake Microsoft 365
  mailproxy login   [-config FILE] [-device|-browser|-manual] [-password-stdin] USER
  mailproxy logout  [-config FILE] USER
  mailproxy status  [-config FILE]
  mailproxy check   [-config FILE] [-account USER [-send-to ADDR]]
  mailproxy queue   [-config FILE] list|show ID|retry ID|delete ID|pause MAILBOX|resume MAILBOX
  mailproxy admin-url [-config FILE]          the admin page's link with its access token
  mailproxy reload  [-config FILE]            ask the running daemon to reload its config
  mailproxy service install|uninstall|start|stop [-config FILE]   (Windows)
  mailproxy healthcheck [-config FILE] [-url URL]   exit 0 when /healthz says ok
  mailproxy hash-password                     print an Argon2id hash for password_hash
  mailproxy version | --version

Run "mailproxy COMMAND -h" for what a command does and its flags.

Exit codes: 0 ok, 1 runtime failure, 2 bad usage or bad config.
`

// Exit codes; 2 is systemd's RestartPreventExitStatus.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// usageError marks errors that exit with status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

type command struct {
	name string
	run  func(ctx context.Context, env *cmdEnv, args []string) error
}

// cmdEnv is what a subcommand may touch of the outside world, so tests can
// run subcommands in-process.
type cmdEnv struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	// readPassword reads a password without echo; nil means stdin is not a
	// terminal.
	readPassword func(prompt string) (string, error)
	// openURL opens an address in a browser (login -browser); nil means
	// the desktop's opener (xdg-open, open, rundll32). Tests replace it.
	openURL func(url string) error
	// serving, when set, is called by serve once its listeners are up and
	// SIGHUP is handled; tests use it to reach the daemon.
	serving func(*daemon.Daemon)
	// reloadDone, when set, is called by serve after each SIGHUP with the
	// config error or nil.
	reloadDone func(error)
	// Set when running as a Windows service: sysLog receives errors (the
	// Event Log), reload the service manager's "parameters changed"
	// requests, and defaultLogFile is log.file when the config leaves it
	// empty (a service has no stderr).
	sysLog         eventSink
	reload         <-chan struct{}
	defaultLogFile string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// After the first signal the default action is back: a second
		// SIGTERM or Ctrl-C ends the process at once, mid-drain.
		<-ctx.Done()
		stop()
	}()
	env := &cmdEnv{
		stdin:        os.Stdin,
		stdout:       os.Stdout,
		stderr:       os.Stderr,
		getenv:       os.Getenv,
		readPassword: terminalPassword(),
	}
	if code, ok := runAsService(env, os.Args[1:]); ok {
		os.Exit(code)
	}
	os.Exit(run(ctx, env, os.Args[1:]))
}

func commands() []command {
	return []command{
		{"serve", runServe},
		{"demo", runDemo},
		{"login", runLogin},
		{"logout", runLogout},
		{"status", runStatus},
		{"check", runCheck},
		{"admin-url", runAdminURL},
		{"hash-password", runHashPassword},
		{"queue", runQueue},
		{"reload", runReload},
		{"service", runService},
		{"healthcheck", runHealthcheck},
		{"version", runVersion},
	}
}

func run(ctx context.Context, env *cmdEnv, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(env.stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(env.stdout, usage)
		return exitOK
	case "--version", "-version":
		args = append([]string{"version"}, args[1:]...)
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, env, args[1:])
		switch {
		case err == nil:
			return exitOK
		case errors.Is(err, flag.ErrHelp):
			return exitOK
		case errors.As(err, new(usageError)), errors.As(err, new(*daemon.ConfigError)):
			fmt.Fprintf(env.stderr, "mailproxy %s: %v\n", c.name, err)
			return exitUsage
		default:
			fmt.Fprintf(env.stderr, "mailproxy %s: %v\n", c.name, err)
			return exitFailure
		}
	}
	fmt.Fprintf(env.stderr, "mailproxy: unknown command %q\n\n%s", args[0], usage)
	return exitUsage
}

// newFlags returns a flag set that reports errors instead of exiting.
func newFlags(env *cmdEnv, name string) *flag.FlagSet {
	fs := flag.NewFlagSet("mailproxy "+name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	return fs
}

// parseFlags parses args and turns flag errors into usage errors.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	return nil
}
