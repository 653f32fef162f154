// Package upstream owns reaching a provider's servers: where they are,
// dialing them with strict TLS, the XOAUTH2 encoding, the memory of a
// provider's throttling and the per-mailbox cap on upstream sessions.
package upstream

import "crypto/tls"

// Upstream says where and how to reach a provider's servers.
type Upstream struct {
	IMAPAddr string      // host:port, implicit TLS
	SMTPAddr string      // host:port; port 465 is implicit TLS, any other STARTTLS
	TLS      *tls.Config // roots (system plus ca_file); ServerName is set per dial
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
