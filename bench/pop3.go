package main

// The POP3 workload: login latency (connect to the +OK of the login, then
// QUIT) and RETR throughput of one large message, each directly against the
// fake POP3 upstream (AUTH XOAUTH2 over TLS) and through front/pop3 (USER
// and PASS on loopback). It has a pair of processes of its own: the
// "pop3-upstream" role (fake Entra ID, the mailbox store and fake365's
// POP3 server) and the "pop3-proxy" role (auth.Accounts, an oauth.Source
// and front/pop3.Server, built as serve builds them).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"mailproxy/auth"
	pop3front "mailproxy/front/pop3"
	"mailproxy/internal/fake365"
	"mailproxy/oauth"
	"mailproxy/upstream"
)

// pop3MaxRETR caps the RETR message: the fake upstream reads a message
// whole before it sends it.
const pop3MaxRETR = 32 << 20

var pop3Scopes = append([]string{fake365.POPScope}, benchScopes...)

type pop3UpstreamHello struct {
	POP3     string `json:"pop3"`
	CAPEM    string `json:"ca_pem"`
	TokenURL string `json:"token_url"`
	Size     int64  `json:"size"`
	PID      int    `json:"pid"`
}

// runPOP3Upstream is the "pop3-upstream" role. Commands: rt (a refresh
// token for benchUser with the POP scope), token (an access token for
// direct clients).
func runPOP3Upstream(args []string, in io.Reader, out io.Writer) error {
	if len(args) != 1 {
		return errors.New("pop3-upstream: want the message size")
	}
	size, err := strconv.ParseInt(args[0], 10, 64)
	if err != nil {
		return err
	}
	ca, srvTLS, idp, err := newTenant()
	if err != nil {
		return err
	}
	defer idp.Close()
	store, err := fake365.NewIMAPUpstream(idp, srvTLS)
	if err != nil {
		return err
	}
	defer store.Close()
	pop, err := fake365.NewPOP3Upstream(idp, store, srvTLS)
	if err != nil {
		return err
	}
	defer pop.Close()
	store.AddMailbox(benchUser)
	if err := store.Append(benchUser, "INBOX", makeMessage(size, "RETR benchmark message", 'p')); err != nil {
		return err
	}
	tokenURL := tenantTokenURL(idp)
	if err := writeJSONLine(out, pop3UpstreamHello{POP3: pop.Addr, CAPEM: string(ca.CertPEM), TokenURL: tokenURL, Size: size, PID: os.Getpid()}); err != nil {
		return err
	}
	return serveCommands(in, out, func(cmd, _ string) (string, error) {
		switch cmd {
		case "rt":
			return idp.GrantRefreshToken(benchClientID, benchUser, pop3Scopes), nil
		case "token":
			p := &oauth.Provider{Name: "bench", ClientID: benchClientID, TokenURL: tokenURL, Scopes: pop3Scopes}
			src := oauth.NewSource(p, oauth.TokenSet{RefreshToken: idp.GrantRefreshToken(benchClientID, benchUser, pop3Scopes)}, nil, nil)
			return src.Token(context.Background())
		}
		return "", fmt.Errorf("unknown command %q", cmd)
	})
}

type pop3ProxyConfig struct {
	POP3         string `json:"pop3"`
	CAPEM        string `json:"ca_pem"`
	TokenURL     string `json:"token_url"`
	RefreshToken string `json:"refresh_token"`
	PasswordHash string `json:"password_hash"`
}

type pop3ProxyHello struct {
	Addr string `json:"addr"`
	PID  int    `json:"pid"`
}

// runPOP3Proxy is the "pop3-proxy" role: front/pop3 for proxyUser.
func runPOP3Proxy(in io.Reader, out io.Writer) error {
	br := bufio.NewReader(in)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("read config line: %w", err)
	}
	var cfg pop3ProxyConfig
	if err := json.Unmarshal(line, &cfg); err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(cfg.CAPEM)) {
		return errors.New("no certificate in ca_pem")
	}
	logger := slog.New(slog.DiscardHandler)
	up := &upstream.Upstream{Addr: map[string]string{pop3front.Name: cfg.POP3}, TLS: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}
	provider := &oauth.Provider{Name: "bench", ClientID: benchClientID, TokenURL: cfg.TokenURL, Scopes: pop3Scopes,
		HTTPClient: &http.Client{Timeout: 30 * time.Second}}
	tokens := oauth.NewSource(provider, oauth.TokenSet{RefreshToken: cfg.RefreshToken, Scopes: pop3Scopes}, nil, logger)
	accounts := auth.NewAccounts([]auth.AccountSpec{{Username: proxyUser, Mailbox: benchUser, PasswordHash: cfg.PasswordHash,
		Tokens: tokens, Upstream: up}}, nil)
	srv := &pop3front.Server{Auth: accounts, Logger: logger}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go srv.Serve(ln)
	defer srv.Close()
	if err := writeJSONLine(out, pop3ProxyHello{Addr: ln.Addr().String(), PID: os.Getpid()}); err != nil {
		return err
	}
	return serveCommands(br, out, func(cmd, _ string) (string, error) {
		return "", fmt.Errorf("unknown command %q", cmd)
	})
}

// pop3Conn is the bench's POP3 client.
type pop3Conn struct {
	c net.Conn
	r *bufio.Reader
}

func (p *pop3Conn) cmd(line string) (string, error) {
	if _, err := io.WriteString(p.c, line+"\r\n"); err != nil {
		return "", err
	}
	return p.line()
}

func (p *pop3Conn) line() (string, error) {
	l, err := p.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	l = strings.TrimRight(l, "\r\n")
	if !strings.HasPrefix(l, "+") {
		return l, fmt.Errorf("POP3 server said %q", l)
	}
	return l, nil
}

// retr reads message n to the terminating dot and returns its size on
// the wire.
func (p *pop3Conn) retr(n int) (int64, error) {
	if _, err := p.cmd("RETR " + strconv.Itoa(n)); err != nil {
		return 0, err
	}
	var total int64
	for {
		l, err := p.r.ReadSlice('\n')
		total += int64(len(l))
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return total, err
		}
		if bytes.Equal(l, []byte(".\r\n")) {
			return total, nil
		}
	}
}

// dialPOP3 connects and logs in: directly, AUTH XOAUTH2 over TLS with
// token; through the proxy, USER and PASS.
func (e *env) dialPOP3(ctx context.Context, m mode, addr, token string) (*pop3Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if m == direct {
		tc := tls.Client(nc, e.clientTLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, err
		}
		nc = tc
	}
	nc.SetDeadline(time.Now().Add(stepTimeout))
	p := &pop3Conn{c: nc, r: bufio.NewReaderSize(nc, 64<<10)}
	fail := func(err error) (*pop3Conn, error) { nc.Close(); return nil, err }
	if _, err := p.line(); err != nil {
		return fail(err)
	}
	if m == direct {
		if _, err := p.cmd("AUTH XOAUTH2"); err != nil {
			return fail(err)
		}
		if _, err := p.cmd(base64.StdEncoding.EncodeToString(upstream.XOAuth2(benchUser, token))); err != nil {
			return fail(err)
		}
	} else {
		if _, err := p.cmd("USER " + proxyUser); err != nil {
			return fail(err)
		}
		if _, err := p.cmd("PASS " + benchPassword); err != nil {
			return fail(err)
		}
	}
	return p, nil
}

func (p *pop3Conn) quit() {
	p.cmd("QUIT")
	p.c.Close()
}

// benchPOP3 is the "pop3" workload.
func (e *env) benchPOP3(ctx context.Context, rep *report) error {
	size := min(e.o.fetchSize, pop3MaxRETR)
	var uh pop3UpstreamHello
	up, err := startChild("pop3-upstream", []string{strconv.FormatInt(size, 10)}, nil, &uh)
	if err != nil {
		return err
	}
	defer up.stop()
	rt, err := up.call("rt")
	if err != nil {
		return err
	}
	token, err := up.call("token")
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(uh.CAPEM))
	saved := e.clientTLS
	e.clientTLS = &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	defer func() { e.clientTLS = saved }()
	var ph pop3ProxyHello
	px, err := startChild("pop3-proxy", nil, pop3ProxyConfig{POP3: uh.POP3, CAPEM: uh.CAPEM, TokenURL: uh.TokenURL,
		RefreshToken: rt, PasswordHash: e.hash}, &ph)
	if err != nil {
		return err
	}
	defer px.stop()
	addr := map[mode]string{direct: uh.POP3, proxied: ph.Addr}

	lat, err := e.loginRounds("POP3 login", func(m mode) (time.Duration, error) {
		start := time.Now()
		c, err := e.dialPOP3(ctx, m, addr[m], token)
		d := time.Since(start)
		if err != nil {
			return 0, err
		}
		c.quit()
		return d, nil
	})
	if err != nil {
		return err
	}
	rep.add(loginRow(fmt.Sprintf("POP3 login, connect to the login's +OK (N=%d each)", e.o.loginN), lat))
	e.logf("pop3 login: direct %s, proxied %s", latencyCell(lat[direct]), latencyCell(lat[proxied]))

	tp := map[mode][]float64{}
	for r := range e.o.fetchRounds + 1 {
		for _, m := range order(r) {
			c, err := e.dialPOP3(ctx, m, addr[m], token)
			if err != nil {
				return fmt.Errorf("POP3 RETR round %d %s: %w", r, m, err)
			}
			start := time.Now()
			n, err := c.retr(1)
			d := time.Since(start)
			c.quit()
			if err != nil {
				return fmt.Errorf("POP3 RETR round %d %s: %w", r, m, err)
			}
			if r > 0 { // the first round warms the upstream's copy
				tp[m] = append(tp[m], mibps(n, d))
			}
		}
	}
	ratio := pairedRatio(tp[direct], tp[proxied])
	rep.add(row{
		workload: fmt.Sprintf("POP3 RETR of a %d MiB message (%d rounds)", size>>20, e.o.fetchRounds),
		direct:   throughputCell(tp[direct], "MiB/s"),
		proxied:  throughputCell(tp[proxied], "MiB/s"),
		ratio:    fmt.Sprintf("%.2f×", ratio),
		target:   "≥ 0.90× direct",
		met:      yesNo(ratio >= 0.90),
	})
	e.logf("pop3 retr: direct %s, proxied %s", throughputCell(tp[direct], "MiB/s"), throughputCell(tp[proxied], "MiB/s"))
	return nil
}
