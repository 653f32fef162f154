// Package upstream owns reaching a provider's servers: where they are,
// dialing them with strict TLS, the XOAUTH2 encoding, the memory of a
// provider's throttling and the per-mailbox cap on upstream sessions.
package upstream

import "crypto/tls"

// Upstream says where and how to reach a provider's servers.
type Upstream struct {
	// Addr is the host:port of each of the provider's servers, by the
	// name of the front that relays to it: "imap" (implicit TLS), "smtp"
	// (port 465 implicit TLS, any other STARTTLS), and whatever a new
	// front registers.
	Addr map[string]string
	TLS  *tls.Config // roots (system plus ca_file); ServerName is set per address (TLSFor)

	// Set by New, read-only after: the configuration TLSFor returns for
	// each address in Addr, valid while TLS is still tlsBase (a copy of
	// the Upstream may have another TLS).
	tlsBase   *tls.Config
	tlsByAddr map[string]*tls.Config
}

// AddrOf returns the address of the server the named front relays to, ""
// when there is none (or u is nil).
func (u *Upstream) AddrOf(front string) string {
	if u == nil {
		return ""
	}
	return u.Addr[front]
}

// XOAuth2 returns the SASL XOAUTH2 initial response for user and an access
// token: "user=" user "\x01auth=Bearer " token "\x01\x01". It is not base64
// encoded; the protocol layer does that.
func XOAuth2(user, token string) []byte {
	const (
		userKey = "user="
		authKey = "\x01auth=Bearer "
		end     = "\x01\x01"
	)
	b := make([]byte, 0, len(userKey)+len(user)+len(authKey)+len(token)+len(end))
	b = append(b, userKey...)
	b = append(b, user...)
	b = append(b, authKey...)
	b = append(b, token...)
	b = append(b, end...)
	return b
}
