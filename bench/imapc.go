package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mailproxy/upstream"
	"net"
	"strconv"
	"strings"
	"time"
)

// imapClient is a minimal IMAP client: just enough for the workloads, and
// the same code for both modes, so that the client's own cost is the same
// except for what differs by design (TLS and XOAUTH2 direct, plain LOGIN
// through the proxy).
type imapClient struct {
	conn net.Conn
	r    *bufio.Reader
	tagN int
	caps string // greeting text
	// idleTag is the tag of the IDLE in progress.
	idleTag string
}

// imapReadBuf is the client's read buffer; large, so that reading a
// literal costs few system calls.
const imapReadBuf = 64 << 10

// dialIMAP connects and reads the greeting; tlsCfg nil means plain TCP.
func dialIMAP(ctx context.Context, addr string, tlsCfg *tls.Config, bufSize int) (*imapClient, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	if tlsCfg != nil {
		tc := tls.Client(nc, tlsCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
		}
		nc = tc
	}
	c := &imapClient{conn: nc, r: bufio.NewReaderSize(nc, bufSize)}
	line, err := c.readLine()
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("read greeting from %s: %w", addr, err)
	}
	if !strings.HasPrefix(line, "* OK") {
		nc.Close()
		return nil, fmt.Errorf("greeting from %s: %q", addr, line)
	}
	c.caps = line
	return c, nil
}

// loginXOAuth2 authenticates with XOAUTH2, as a modern client talking to
// Microsoft 365 does.
func (c *imapClient) loginXOAuth2(user, token string) error {
	ir := base64.StdEncoding.EncodeToString(upstream.XOAuth2(user, token))
	if strings.Contains(c.caps, "SASL-IR") {
		_, err := c.run("AUTHENTICATE XOAUTH2 " + ir)
		return err
	}
	tag := c.send("AUTHENTICATE XOAUTH2")
	line, err := c.readLine()
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+") {
		return fmt.Errorf("AUTHENTICATE: want a continuation, got %q", line)
	}
	if _, err := io.WriteString(c.conn, ir+"\r\n"); err != nil {
		return err
	}
	return c.wait(tag, nil)
}

// login authenticates with LOGIN, as the legacy clients in front of
// mailproxy do.
func (c *imapClient) login(user, pass string) error {
	_, err := c.run("LOGIN " + quote(user) + " " + quote(pass))
	return err
}

func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// send writes a tagged command and returns the tag.
func (c *imapClient) send(cmd string) string {
	c.tagN++
	tag := "b" + strconv.Itoa(c.tagN)
	// One write: no Nagle interplay.
	io.WriteString(c.conn, tag+" "+cmd+"\r\n")
	return tag
}

// run sends cmd and waits for its tagged OK, discarding literals.
func (c *imapClient) run(cmd string) (string, error) {
	tag := c.send(cmd)
	return tag, c.wait(tag, nil)
}

// wait reads responses until the tagged reply for tag. A literal is given
// to lit with the reader positioned at its first byte; lit must consume it
// exactly (nil: discard).
func (c *imapClient) wait(tag string, lit func(n int64) error) error {
	prefix := tag + " "
	for {
		line, err := c.readLine()
		if err != nil {
			return err
		}
		if n, ok := literalSize(line); ok {
			if lit != nil {
				err = lit(n)
			} else {
				_, err = c.r.Discard(int(n))
			}
			if err != nil {
				return fmt.Errorf("read literal of %d bytes: %w", n, err)
			}
			continue // the rest of the response follows the literal
		}
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			if !strings.HasPrefix(rest, "OK") {
				return fmt.Errorf("%s", line)
			}
			return nil
		}
	}
}

// readLine reads one line without its CRLF.
func (c *imapClient) readLine() (string, error) {
	var buf []byte
	for {
		frag, err := c.r.ReadSlice('\n')
		if err == nil {
			if buf == nil {
				return string(bytes.TrimRight(frag, "\r\n")), nil
			}
			buf = append(buf, frag...)
			return string(bytes.TrimRight(buf, "\r\n")), nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return "", err
		}
		buf = append(buf, frag...)
	}
}

// literalSize reports the size of a literal announced at the end of line:
// {N} or {N+}.
func literalSize(line string) (int64, bool) {
	if !strings.HasSuffix(line, "}") {
		return 0, false
	}
	i := strings.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSuffix(line[i+1:len(line)-1], "+"), 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// fetchBody fetches message 1 of the selected mailbox and returns its size.
func (c *imapClient) fetchBody() (int64, error) {
	var got int64
	tag := c.send("FETCH 1 (BODY.PEEK[])")
	err := c.wait(tag, func(n int64) error {
		got = n
		_, err := c.r.Discard(int(n))
		return err
	})
	return got, err
}

// startStall sends the FETCH, reads its first after bytes and then stops
// reading, like a client that hangs mid-download.
func (c *imapClient) startStall(after int64) error {
	c.send("FETCH 1 (BODY.PEEK[])")
	for {
		line, err := c.readLine()
		if err != nil {
			return err
		}
		n, ok := literalSize(line)
		if !ok {
			continue
		}
		_, err = c.r.Discard(int(min(n, after)))
		return err
	}
}

// logout says LOGOUT without waiting long, then closes.
func (c *imapClient) logout() {
	c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	tag := c.send("LOGOUT")
	c.wait(tag, nil)
	c.conn.Close()
}

func (c *imapClient) close() { c.conn.Close() }

// setDeadline bounds what follows.
func (c *imapClient) setDeadline(d time.Duration) { c.conn.SetDeadline(time.Now().Add(d)) }
