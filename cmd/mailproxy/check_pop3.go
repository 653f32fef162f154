package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"

	"mailproxy/upstream"
)

// checkPOP3 connects with implicit TLS (port 995), reads the greeting and
// asks for the capabilities (RFC 2449): SASL must list XOAUTH2.
func checkPOP3(ctx context.Context, addr string, base *tls.Config) (string, error) {
	conn, err := upstream.DialTLS(ctx, nil, addr, base)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	defer closeOnDone(ctx, conn)()
	r := bufio.NewReaderSize(conn, maxGreeting)
	line, err := readIMAPLine(r)
	if err != nil {
		return "", fmt.Errorf("read greeting: %w", err)
	}
	if !strings.HasPrefix(line, "+OK") {
		return "", fmt.Errorf("greeting is %q, want \"+OK ...\"", shorten(line))
	}
	if _, err := conn.Write([]byte("CAPA\r\n")); err != nil {
		return "", fmt.Errorf("send CAPA: %w", err)
	}
	if line, err = readIMAPLine(r); err != nil {
		return "", fmt.Errorf("read CAPA answer: %w", err)
	}
	if !strings.HasPrefix(line, "+OK") {
		return "", fmt.Errorf("CAPA answered %q", shorten(line))
	}
	xoauth2 := false
	for {
		line, err := readIMAPLine(r)
		if err != nil {
			return "", fmt.Errorf("read CAPA answer: %w", err)
		}
		if line == "." {
			break
		}
		if f := strings.Fields(line); len(f) > 0 && strings.EqualFold(f[0], "SASL") {
			for _, m := range f[1:] {
				xoauth2 = xoauth2 || strings.EqualFold(m, "XOAUTH2")
			}
		}
	}
	conn.Write([]byte("QUIT\r\n"))
	if !xoauth2 {
		return "", errors.New("TLS and greeting ok, but the server does not offer SASL XOAUTH2")
	}
	return "TLS ok, greeting +OK, SASL XOAUTH2 offered", nil
}
