package daemon

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"mailproxy/config"
)

// Hooks tell a service manager what the daemon does; any may be nil.
type Hooks struct {
	// Ready is called once the listeners are bound, and again after each
	// reload (done or refused), with a one-line status.
	Ready func(status string) error
	// Reloading is called when SIGHUP arrives.
	Reloading func() error
	// Stopping is called when the daemon begins to drain.
	Stopping func() error
	// Serving is called once the listeners are bound, before Ready (tests).
	Serving func()
	// ReloadDone is called after each SIGHUP with the config error or nil
	// (tests).
	ReloadDone func(error)
	// Reload delivers reload requests that are not SIGHUP (the Windows
	// service manager's ParamChange); nil means SIGHUP only.
	Reload <-chan struct{}
}

// Run starts the daemon and serves until ctx is done or a listener fails,
// reloading the config from cfgPath on SIGHUP; then it shuts down within
// the config's shutdown timeout.
func (d *Daemon) Run(ctx context.Context, cfgPath string, h Hooks) error {
	call := func(f func() error) {
		if f != nil {
			f()
		}
	}
	ready := func(status string) error {
		if h.Ready == nil {
			return nil
		}
		return h.Ready(status)
	}
	if err := d.Start(); err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if h.Serving != nil {
		h.Serving()
	}
	cfg := d.Config()
	// READY only now: SIGHUP's default action would kill a process that
	// systemd reloads before it handles the signal.
	if err := ready(fmt.Sprintf("serving %d accounts", len(cfg.Accounts))); err != nil {
		d.logger.Warn("sd_notify failed", "err", err)
	}
	reload := func() {
		call(h.Reloading)
		next, err := config.Load(cfgPath)
		if err != nil {
			d.logger.Error("reload refused: keeping the running config", "err", err)
			ready("reload refused, running the previous config: " + err.Error())
		} else {
			d.Reload(next)
			ready(fmt.Sprintf("serving %d accounts (reloaded %s)", len(next.Accounts), time.Now().Format("15:04:05")))
		}
		if h.ReloadDone != nil {
			h.ReloadDone(err)
		}
	}
	for {
		select {
		case <-hup:
			reload()
		case <-h.Reload:
			reload()
		case err := <-d.failed:
			call(h.Stopping)
			d.Shutdown(context.Background())
			return err
		case <-ctx.Done():
			call(h.Stopping)
			// The timeout of the config the daemon started with: timeouts
			// take effect at the next start.
			d.logger.Info("shutting down", "deadline", cfg.ShutdownTimeout)
			sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
			err := d.Shutdown(sctx)
			cancel()
			return err
		}
	}
}
