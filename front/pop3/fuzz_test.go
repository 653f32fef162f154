package pop3

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"mailproxy/auth"
)

// FuzzPreLogin feeds arbitrary client bytes to the pre-login loop: the
// session must neither panic nor hang, and must end by itself once the
// client has said QUIT or closed.
func FuzzPreLogin(f *testing.F) {
	for _, seed := range []string{
		"CAPA\r\nQUIT\r\n",
		"USER a\r\nPASS b c d\r\n",
		"AUTH PLAIN\r\n*\r\n",
		"AUTH LOGIN =\r\n=\r\n=\r\n",
		"AUTH PLAIN AGFAYg==\r\n",
		"AUTH PLAIN " + strings.Repeat("A", 20000) + "\r\n",
		"\r\n\r\n\n\n \r\n",
		"STLS\r\nSTLS\r\n",
		"\x00\x01\x02\xff\r\nUSER\x00\r\n",
		"AUTH\r\nAUTH X\r\nAPOP a b\r\n",
	} {
		f.Add([]byte(seed))
	}
	e := newEnv(f, logOnly, withServer(func(s *Server) {
		s.MaxLine = 1000
		s.PreAuthTimeout = 5 * time.Second
		s.Auth = authFunc(func(context.Context, string, string, netip.Addr) (*auth.Grant, error) {
			return nil, &auth.AuthError{Kind: auth.AuthFailed, Msg: "invalid credentials", Err: auth.ErrBadCredentials}
		})
	}))
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		go func() {
			c.Write(in)
			c.Write([]byte("\r\nQUIT\r\n"))
			c.(*net.TCPConn).CloseWrite()
		}()
		out, err := io.ReadAll(c)
		if err != nil && !strings.Contains(err.Error(), "reset") {
			t.Fatalf("read: %v (got %q)", err, out)
		}
		if !strings.HasPrefix(string(out), "+OK mailproxy POP3 ready\r\n") {
			t.Fatalf("output %q does not start with the greeting", out)
		}
		if strings.Contains(e.logs.String(), "panic") {
			t.Fatalf("the session panicked:\n%s", e.logs.String())
		}
	})
}
