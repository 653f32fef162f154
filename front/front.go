// Package front owns what every protocol front shares: the Front interface
// the daemon serves them through; Core, the server half of a line-based
// front (listeners, session registry, accept backoff, pre-login cap,
// Close and Shutdown) and Conn, a connection's id, address, start and end
// lines and login steps; RetryListener, the accept backoff as a listener
// wrapper; the connection limiter and its listener, the refusal log, the
// Metrics they report to, and the server sides of the PLAIN and LOGIN SASL
// mechanisms.
package front

import (
	"context"
	"errors"
	"log/slog"
	"net"
)

// ErrServerClosed is what a front's Serve returns (wrapped) after Close or
// Shutdown.
var ErrServerClosed = errors.New("server closed")

// Front is one protocol front. Like net/http's Server it serves any number
// of listeners; connections that are *tls.Conn (tls.NewListener) are
// implicit TLS.
type Front interface {
	// Serve accepts on ln until Close or Shutdown, then returns an error
	// wrapping ErrServerClosed; it always closes ln.
	Serve(ln net.Listener) error
	// Shutdown stops accepting and lets sessions finish until ctx is
	// done; it returns ctx's error if they did not.
	Shutdown(ctx context.Context) error
	// Close ends every session at once.
	Close() error
	// SetTrace makes the front log a protocol trace at debug level, with
	// every credential replaced by a marker; nil turns it off. Call it
	// before the first Serve.
	SetTrace(trace *slog.Logger)
}
