package testutil

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"

	"golang.org/x/crypto/argon2"
)

// LineClient speaks a line-based protocol (IMAP, POP3, SMTP) by hand:
// each step fails the test when the server does not answer as expected.
type LineClient struct {
	T    testing.TB
	Conn net.Conn
	R    *bufio.Reader
}

// NewLineClient reads and writes conn.
func NewLineClient(t testing.TB, conn net.Conn) *LineClient {
	return &LineClient{T: t, Conn: conn, R: bufio.NewReader(conn)}
}

// Send writes s as it is (the caller adds CRLF).
func (c *LineClient) Send(s string) {
	c.T.Helper()
	if _, err := io.WriteString(c.Conn, s); err != nil {
		c.T.Fatalf("Write(%q) = %v", s, err)
	}
}

// Line reads one line, without its line ending.
func (c *LineClient) Line() string {
	c.T.Helper()
	l, err := c.R.ReadString('\n')
	if err != nil {
		c.T.Fatalf("ReadString() = %q, %v; want a line", l, err)
	}
	return strings.TrimRight(l, "\r\n")
}

// Expect reads a line and checks its prefix.
func (c *LineClient) Expect(prefix string) string {
	c.T.Helper()
	l := c.Line()
	if !strings.HasPrefix(l, prefix) {
		c.T.Fatalf("read %q, want prefix %q", l, prefix)
	}
	return l
}

// UntilTagged reads IMAP lines up to the tagged reply of tag, which it
// returns with the untagged lines before it.
func (c *LineClient) UntilTagged(tag string) (reply string, untagged []string) {
	c.T.Helper()
	for {
		l := c.Line()
		if strings.HasPrefix(l, tag+" ") {
			return l, untagged
		}
		untagged = append(untagged, l)
	}
}

// CheapPHC hashes password as an Argon2id PHC string with the smallest
// parameters: the login reads them from the string, so tests need not pay
// the real cost.
func CheapPHC(t testing.TB, password string) string {
	t.Helper()
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		t.Fatal(err)
	}
	key := argon2.IDKey([]byte(password), salt, 1, 64, 1, 32)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=19$m=64,t=1,p=1$%s$%s", enc.EncodeToString(salt), enc.EncodeToString(key))
}
