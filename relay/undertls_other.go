//go:build !unix

package relay

// initRaw: without a portable non-blocking read, only what crypto/tls has
// already buffered is gathered.
func (u *underConn) initRaw() {}
