//go:build linux

package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The service manager protocol (sd_notify(3)), written out because it is a
// single datagram: a unit with Type=notify sets $NOTIFY_SOCKET, and the
// daemon sends newline-separated VAR=value assignments to it.
//
// serve sends READY=1 once its listeners are bound (systemctl start returns
// then, and units ordered After= it start only then), RELOADING=1 when
// SIGHUP arrives and READY=1 again when the reload is done (or refused),
// and STOPPING=1 when it begins to drain.

// notifyWriteTimeout bounds one datagram: a service manager that does not
// read must not stall a reload or a shutdown.
const notifyWriteTimeout = 2 * time.Second

// sdNotify sends state to the service manager at $NOTIFY_SOCKET. It does
// nothing and returns nil when the variable is not set (not started by
// systemd, or not Type=notify).
func sdNotify(state string) error {
	return notifySocket(os.Getenv("NOTIFY_SOCKET"), state)
}

// notifySocket sends state as one datagram to socket: a file system path,
// or an abstract socket written with a leading '@'. socket "" is a no-op.
func notifySocket(socket, state string) error {
	if socket == "" {
		return nil
	}
	if socket[0] != '/' && socket[0] != '@' {
		// systemd also knows "vsock:CID:PORT" (for VMs); mailproxy does
		// not run there.
		return fmt.Errorf("sd_notify: NOTIFY_SOCKET %q is not a unix socket path", socket)
	}
	if state == "" {
		return errors.New("sd_notify: empty state")
	}
	// Go's unix socket addresses map a leading '@' to Linux's abstract
	// namespace (a leading NUL byte), as systemd means it.
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: socket, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(notifyWriteTimeout))
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify %s: %w", firstLine(state), err)
	}
	return nil
}

// notifyReady says that serve is up: after start, and again after each
// reload. status is shown by `systemctl status`; "" sends none.
func notifyReady(status string) error {
	return sdNotify("READY=1" + statusLine(status))
}

// notifyReloading says that a reload began; READY=1 must follow when it is
// over. MONOTONIC_USEC lets systemd 253+ (Type=notify-reload) match this
// message to the reload it asked for; older versions ignore it.
func notifyReloading() error {
	usec, err := monotonicUsec()
	if err != nil {
		return sdNotify("RELOADING=1")
	}
	return sdNotify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", usec))
}

// notifyStopping says that serve is draining sessions and will exit.
func notifyStopping() error {
	return sdNotify("STOPPING=1" + statusLine("shutting down"))
}

// notifyStatus updates the one-line status `systemctl status` shows.
func notifyStatus(status string) error {
	return sdNotify(strings.TrimPrefix(statusLine(status), "\n"))
}

// statusLine is "\nSTATUS=<status>" with the status on one line, or "".
func statusLine(status string) string {
	status = strings.Join(strings.Fields(status), " ")
	if status == "" {
		return ""
	}
	return "\nSTATUS=" + status
}

// monotonicUsec reads CLOCK_MONOTONIC in microseconds, the clock systemd
// uses for MONOTONIC_USEC.
func monotonicUsec() (int64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("clock_gettime(CLOCK_MONOTONIC): %w", err)
	}
	return ts.Sec*1e6 + ts.Nsec/1e3, nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
