package upstream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"mailproxy/internal/fake365"
)

// BenchmarkXOAuth2 measures the proxy side of an upstream XOAUTH2 login.
//
// initial-response is the in-memory part: the SASL response for an
// Entra-sized (~1.5 KB) access token and its base64, as the IMAP front
// builds the AUTHENTICATE line.
//
// imap-tls is the whole upstream login the IMAP front makes for each
// client login, against the fake Exchange IMAP server over loopback:
// DialTLS (TCP, TLS handshake, certificate verification), greeting,
// AUTHENTICATE XOAUTH2 with SASL-IR, tagged OK. The numbers include the
// fake server's work, which runs in this process too.
//
// imap-tls-resumed is the same with a TLS session cache, as a measure of
// what session resumption would save (the proxy does not use it today).
func BenchmarkXOAuth2(b *testing.B) {
	b.Run("initial-response", func(b *testing.B) {
		token := strings.Repeat("eyJ0eXAiOiJKV1QiLCJub25jZSI6", 1500/28)
		enc := base64.StdEncoding
		b.ReportAllocs()
		for b.Loop() {
			raw := XOAuth2("alice@contoso.com", token)
			if enc.EncodedLen(len(raw)) < len(token) {
				b.Fatal("short response")
			}
			_ = enc.EncodeToString(raw)
		}
	})

	up := newXOAuth2Upstream(b)
	b.Run("imap-tls", func(b *testing.B) {
		cfg := up.tls.Clone()
		b.ReportAllocs()
		for b.Loop() {
			up.login(b, cfg)
		}
	})
	b.Run("imap-tls-resumed", func(b *testing.B) {
		cfg := up.tls.Clone()
		cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
		up.login(b, cfg) // fills the cache
		b.ReportAllocs()
		for b.Loop() {
			up.login(b, cfg)
		}
	})
}

// xoauth2Upstream is a fake IMAP upstream with a valid token for user.
type xoauth2Upstream struct {
	addr  string
	tls   *tls.Config
	user  string
	token string
}

func newXOAuth2Upstream(b *testing.B) *xoauth2Upstream {
	b.Helper()
	const (
		clientID = "bench-client"
		user     = "alice@contoso.com"
	)
	scopes := []string{"https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"}
	ca, err := fake365.NewCA()
	if err != nil {
		b.Fatalf("NewCA() = %v", err)
	}
	srvTLS, err := ca.ServerTLS()
	if err != nil {
		b.Fatalf("ServerTLS() = %v", err)
	}
	idp, err := fake365.NewIdP()
	if err != nil {
		b.Fatalf("NewIdP() = %v", err)
	}
	b.Cleanup(idp.Close)
	idp.AddClient(fake365.Client{ID: clientID})
	idp.AddUser(user)
	up, err := fake365.NewIMAPUpstream(idp, srvTLS)
	if err != nil {
		b.Fatalf("NewIMAPUpstream() = %v", err)
	}
	b.Cleanup(func() { up.Close() })
	up.AddMailbox(user)

	// An access token the way the oauth package gets one: the refresh
	// grant at the token endpoint.
	_, tokenURL, _ := idp.Endpoints("contoso.com")
	rt := idp.GrantRefreshToken(clientID, user, scopes)
	resp, err := http.PostForm(tokenURL, url.Values{
		"grant_type":    {"refresh_token"},
		"client_id":     {clientID},
		"refresh_token": {rt},
		"scope":         {strings.Join(scopes, " ")},
	})
	if err != nil {
		b.Fatalf("refresh at %s: %v", tokenURL, err)
	}
	defer resp.Body.Close()
	var tr struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil || tr.AccessToken == "" {
		b.Fatalf("refresh at %s = %s, %v, want an access token", tokenURL, resp.Status, err)
	}
	return &xoauth2Upstream{
		addr:  up.Addr,
		tls:   tlsConfigFor(ca.ClientTLS(), up.Addr),
		user:  user,
		token: tr.AccessToken,
	}
}

// login does what the IMAP front does upstream for one client login, then
// closes the connection.
func (u *xoauth2Upstream) login(b *testing.B, cfg *tls.Config) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := DialTLS(ctx, nil, u.addr, cfg)
	if err != nil {
		b.Fatalf("DialTLS(%s) = %v", u.addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReaderSize(c, 4<<10)
	greeting, err := r.ReadSlice('\n')
	if err != nil || !bytes.HasPrefix(greeting, []byte("* OK")) {
		b.Fatalf("greeting = %q, %v, want * OK", greeting, err)
	}
	ir := base64.StdEncoding.EncodeToString(XOAuth2(u.user, u.token))
	if _, err := fmt.Fprintf(c, "a1 AUTHENTICATE XOAUTH2 %s\r\n", ir); err != nil {
		b.Fatalf("write AUTHENTICATE: %v", err)
	}
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			b.Fatalf("read AUTHENTICATE reply: %v", err)
		}
		if bytes.HasPrefix(line, []byte("a1 ")) {
			if !bytes.HasPrefix(line, []byte("a1 OK")) {
				b.Fatalf("AUTHENTICATE reply = %q, want a1 OK", line)
			}
			return
		}
	}
}
