package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mailproxy/auth"
	"mailproxy/config"
	"mailproxy/front"
	"mailproxy/relay"
	"mailproxy/upstream"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// protoSMTP is an experiment, not part of mailproxy: an SMTP front that
// answers EHLO and AUTH PLAIN itself, logs in upstream with STARTTLS and
// XOAUTH2, and from then on relays the session's bytes untouched with
// relay.Relay, as the IMAP front does. Message data then crosses the proxy
// without being dot-decoded and dot-encoded again. The bench runs it
// (-smtp-prototype) to measure what such a design would give next to
// front/smtp; it skips everything a real front needs (STARTTLS towards the
// client, AUTH LOGIN, limits, shutdown, token refresh on refusal, error
// texts).
type protoSMTP struct {
	auth auth.Authenticator
	log  *slog.Logger
}

const protoTimeout = time.Minute

func (s *protoSMTP) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go s.handle(c)
	}
}

func (s *protoSMTP) handle(nc net.Conn) {
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(protoTimeout))
	br := bufio.NewReaderSize(nc, 4<<10)
	say := func(line string) bool {
		_, err := io.WriteString(nc, line+"\r\n")
		return err == nil
	}
	if !say("220 mailproxy prototype ESMTP") {
		return
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			// What the fake upstream offers too, so that the client's
			// MAIL parameters suit it after the hand-over.
			say("250-mailproxy\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE " + strconv.Itoa(config.FallbackMaxMessageBytes) + "\r\n250 AUTH PLAIN")
		case "HELO":
			say("250 mailproxy")
		case "NOOP", "RSET":
			say("250 2.0.0 OK")
		case "QUIT":
			say("221 2.0.0 Bye")
			return
		case "AUTH":
			mech, ir, _ := strings.Cut(arg, " ")
			if !strings.EqualFold(mech, "PLAIN") {
				say("504 5.5.4 Unrecognized authentication type")
				continue
			}
			if ir == "" {
				say("334 ")
				if ir, err = br.ReadString('\n'); err != nil {
					return
				}
				ir = strings.TrimRight(ir, "\r\n")
			}
			resp, err := base64.StdEncoding.DecodeString(ir)
			if err != nil {
				say("501 5.5.2 Malformed authentication exchange")
				continue
			}
			_, user, pass, err := front.ParsePlain(resp)
			if err != nil {
				say("501 5.5.2 Malformed authentication exchange")
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), protoTimeout)
			g, err := s.auth.Authenticate(ctx, user, pass, remoteIP(nc))
			if err != nil {
				cancel()
				say("535 5.7.8 Authentication credentials invalid")
				continue
			}
			up, upr, err := protoUpstream(ctx, g)
			cancel()
			if err != nil {
				s.log.Warn("prototype smtp upstream", "err", err)
				say("454 4.7.0 Temporary authentication failure")
				continue
			}
			if !say("235 2.7.0 Authentication successful") {
				up.Close()
				return
			}
			if _, _, err := relay.Relay(nc, br, up, upr, relay.RelayOptions{}); err != nil {
				s.log.Debug("prototype smtp relay ended", "err", err)
			}
			return
		default:
			say("530 5.7.0 Authentication required")
		}
	}
}

func remoteIP(nc net.Conn) netip.Addr {
	if ta, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// protoUpstream opens an authenticated upstream SMTP session: EHLO,
// STARTTLS, EHLO, AUTH XOAUTH2.
func protoUpstream(ctx context.Context, g *auth.Grant) (*tls.Conn, *bufio.Reader, error) {
	addr := g.Upstream.AddrOf("smtp")
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	dl, _ := ctx.Deadline()
	raw.SetDeadline(dl)
	fail := func(step string, err error) (*tls.Conn, *bufio.Reader, error) {
		raw.Close()
		return nil, nil, fmt.Errorf("%s: %w", step, err)
	}
	r := bufio.NewReaderSize(raw, 4<<10)
	if err := protoExpect(r, "220"); err != nil {
		return fail("greeting", err)
	}
	if err := protoCmd(raw, r, "EHLO mailproxy", "250"); err != nil {
		return fail("EHLO", err)
	}
	if err := protoCmd(raw, r, "STARTTLS", "220"); err != nil {
		return fail("STARTTLS", err)
	}
	tc := tls.Client(raw, g.Upstream.TLSFor(addr))
	if err := tc.HandshakeContext(ctx); err != nil {
		return fail("TLS", err)
	}
	r = bufio.NewReaderSize(tc, 4<<10)
	if err := protoCmd(tc, r, "EHLO mailproxy", "250"); err != nil {
		return fail("EHLO after TLS", err)
	}
	tok, err := g.Tokens.Token(ctx)
	if err != nil {
		return fail("token", err)
	}
	ir := base64.StdEncoding.EncodeToString(upstream.XOAuth2(g.Identity, tok))
	if err := protoCmd(tc, r, "AUTH XOAUTH2 "+ir, "235"); err != nil {
		return fail("AUTH", err)
	}
	tc.SetDeadline(time.Time{})
	return tc, r, nil
}

func protoCmd(w io.Writer, r *bufio.Reader, cmd, want string) error {
	if _, err := io.WriteString(w, cmd+"\r\n"); err != nil {
		return err
	}
	return protoExpect(r, want)
}

// protoExpect reads a (multi-line) reply and checks its code.
func protoExpect(r *bufio.Reader, want string) error {
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if len(line) < 4 {
			return errors.New("short reply")
		}
		if line[3] == '-' {
			continue
		}
		if !strings.HasPrefix(line, want) {
			return fmt.Errorf("reply %q, want %s", strings.TrimSpace(line), want)
		}
		return nil
	}
}
