package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	smtpfront "mailproxy/front/smtp"
	"mailproxy/internal/fake365"
	"mailproxy/upstream"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

const benchRcpt = "rcpt@contoso.test"

// xoauth2Client is the client side of SASL XOAUTH2 for the direct SMTP
// clients (go-sasl has none). An error challenge gets the empty response.
type xoauth2Client struct{ user, token string }

func (x xoauth2Client) Start() (string, []byte, error) {
	return "XOAUTH2", upstream.XOAuth2(x.user, x.token), nil
}

func (x xoauth2Client) Next([]byte) ([]byte, error) { return []byte{}, nil }

// proxiedTLS is a client of the proxy that starts TLS with STARTTLS; the
// SMTP workloads run it next to proxied (plain TCP), on the same DATA path.
const proxiedTLS = prototype + 1

// smtpModeName names the SMTP modes in progress lines and the report.
func smtpModeName(m mode) string {
	if m == proxiedTLS {
		return "proxied STARTTLS"
	}
	return m.String()
}

// smtpFrontTLS gives the proxy's SMTP front a certificate from a fake CA
// of its own, so that it offers STARTTLS, and returns the CA in PEM for
// the clients.
func smtpFrontTLS(srv *smtpfront.Server) (string, error) {
	ca, err := fake365.NewCA()
	if err != nil {
		return "", err
	}
	if srv.TLSConfig, err = ca.ServerTLS("127.0.0.1"); err != nil {
		return "", err
	}
	return string(ca.CertPEM), nil
}

// smtpClient opens an authenticated submission session: STARTTLS and
// XOAUTH2 to the upstream; plain TCP (or STARTTLS, for proxiedTLS) and
// AUTH PLAIN to the proxy.
func (e *env) smtpClient(p *proxyProc, m mode) (*smtp.Client, error) {
	var c *smtp.Client
	var err error
	var auth sasl.Client
	switch m {
	case direct:
		c, err = smtp.DialStartTLS(e.upInfo.SMTP, e.clientTLS)
		auth = xoauth2Client{benchUser, e.token}
	case proxiedTLS:
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM([]byte(p.hello.SMTPCAPEM)) {
			return nil, errors.New("the proxy sent no SMTP front CA")
		}
		cfg := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
		c, err = smtp.DialStartTLS(p.hello.SMTP, cfg)
		auth = sasl.NewPlainClient("", proxyUser, benchPassword)
	default:
		addr := p.hello.SMTP
		if m == prototype {
			addr = p.hello.SMTPProto
		}
		c, err = smtp.Dial(addr)
		auth = sasl.NewPlainClient("", proxyUser, benchPassword)
	}
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", smtpModeName(m), err)
	}
	c.CommandTimeout = stepTimeout
	c.SubmissionTimeout = stepTimeout
	if err := c.Auth(auth); err != nil {
		c.Close()
		return nil, fmt.Errorf("AUTH %s: %w", smtpModeName(m), err)
	}
	return c, nil
}

func sendOne(c *smtp.Client, msg []byte) error {
	return c.SendMail(benchUser, []string{benchRcpt}, bytes.NewReader(msg))
}

// smtpResult is one submission round.
type smtpResult struct {
	wall     time.Duration
	lat      []time.Duration // per message, MAIL to the 250 after the data
	cpuProxy time.Duration
	bytes    int64
}

// benchSMTP: smtpMessages messages of smtpSize bytes over smtpSessions
// concurrent sessions (messages per second), and one bigSize message
// (throughput), each direct, through the proxy over plain TCP and through
// it with STARTTLS. Sessions are opened and send one message each before
// the clock starts: through the proxy, that first message opens the
// upstream connection, which the direct client opened at connect.
func (e *env) benchSMTP(ctx context.Context, rep *report) error {
	p, err := e.mainProxy(ctx)
	if err != nil {
		return err
	}
	msg := makeMessage(int64(e.o.smtpSize), "SMTP benchmark message", 's')
	modes := []mode{direct, proxied, proxiedTLS}
	if e.o.smtpPrototype {
		modes = append(modes, prototype)
	}
	rate := map[mode][]float64{}
	lat := map[mode][]time.Duration{}
	cpu := map[mode]time.Duration{}
	relayed := map[mode]int64{}
	for r := range e.o.smtpRounds {
		for _, m := range rotate(modes, r) {
			res, err := e.smtpRound(p, m, msg)
			if err != nil {
				return fmt.Errorf("SMTP %s round %d: %w", smtpModeName(m), r, err)
			}
			rate[m] = append(rate[m], float64(e.o.smtpMessages)/res.wall.Seconds())
			lat[m] = append(lat[m], res.lat...)
			cpu[m] += res.cpuProxy
			relayed[m] += res.bytes
			e.logf("smtp %s round %d: %.0f msgs/s", smtpModeName(m), r, float64(e.o.smtpMessages)/res.wall.Seconds())
		}
	}
	big := makeMessage(int64(e.o.bigSize), "SMTP large message", 'L')
	thr := map[mode][]float64{}
	for r := range e.o.bigRounds {
		for _, m := range rotate(modes, r) {
			res, err := e.smtpBig(p, m, big, msg)
			if err != nil {
				return fmt.Errorf("SMTP large %s round %d: %w", smtpModeName(m), r, err)
			}
			thr[m] = append(thr[m], mibps(res.bytes, res.wall))
			cpu[m] += res.cpuProxy
			relayed[m] += res.bytes
			e.logf("smtp large %s round %d: %.1f MiB/s", smtpModeName(m), r, mibps(res.bytes, res.wall))
		}
	}
	perGB := func(m mode) string {
		return fmt.Sprintf("%.2f CPU-s/GB", cpu[m].Seconds()/(float64(relayed[m])/1e9))
	}
	for _, m := range []mode{proxied, proxiedTLS} {
		how := "plain TCP to the proxy"
		if m == proxiedTLS {
			how = "STARTTLS to the proxy"
		}
		ratio := pairedRatio(rate[direct], rate[m])
		rep.add(row{
			workload: fmt.Sprintf("SMTP %d messages of %d KiB, %d sessions, %s", e.o.smtpMessages, e.o.smtpSize>>10, e.o.smtpSessions, how),
			direct:   throughputCell(rate[direct], "msgs/s"),
			proxied:  throughputCell(rate[m], "msgs/s"),
			ratio:    ratioCell(rate[direct], rate[m]),
			target:   "≥ 0.9×",
			met:      yesNo(ratio >= 0.9),
		})
		ratio = pairedRatio(thr[direct], thr[m])
		rep.add(row{
			workload: fmt.Sprintf("SMTP one %d MiB message, %s", e.o.bigSize>>20, how),
			direct:   throughputCell(thr[direct], "MiB/s"),
			proxied:  throughputCell(thr[m], "MiB/s"),
			ratio:    ratioCell(thr[direct], thr[m]),
			target:   "≥ 0.75× (issue 12)",
			met:      yesNo(ratio >= 0.75),
		})
		rep.add(row{
			workload: "proxy CPU per GB relayed (SMTP, both workloads, " + how + ")",
			direct:   "—",
			proxied:  perGB(m),
			ratio:    "—",
			target:   "(report)",
			met:      "—",
		})
	}
	rep.note("SMTP per-message latency (MAIL to 250 after the data): direct %s, proxied %s, proxied with STARTTLS %s.",
		latencyCell(lat[direct]), latencyCell(lat[proxied]), latencyCell(lat[proxiedTLS]))
	rep.note("SMTP direct clients use STARTTLS to the upstream. Every client writes its message through go-smtp's 4 KiB buffer, " +
		"so with STARTTLS the proxy reads TLS records of at most 4 KiB; the upstream writes replies only, a line per record, " +
		"so -record-size does not apply to SMTP (fake365.SMTPUpstream.SetRecordSize).")
	if e.o.smtpPrototype {
		rateR := pairedRatio(rate[direct], rate[prototype])
		thrR := pairedRatio(thr[direct], thr[prototype])
		rep.note("SMTP pass-through prototype (bench/smtpproto.go, an experiment, not mailproxy: local AUTH, then relay.Relay): "+
			"%d×%d KiB %s = %.2f× direct; one %d MiB message %s = %.2f× direct; the prototype process spent %s. "+
			"Per-message latency %s.",
			e.o.smtpMessages, e.o.smtpSize>>10, throughputCell(rate[prototype], "msgs/s"), rateR,
			e.o.bigSize>>20, throughputCell(thr[prototype], "MiB/s"), thrR, perGB(prototype), latencyCell(lat[prototype]))
	}
	return nil
}

func (e *env) smtpRound(p *proxyProc, m mode, msg []byte) (smtpResult, error) {
	n := e.o.smtpSessions
	clients := make([]*smtp.Client, 0, n)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for range n {
		c, err := e.smtpClient(p, m)
		if err != nil {
			return smtpResult{}, err
		}
		clients = append(clients, c)
		if err := sendOne(c, msg); err != nil {
			return smtpResult{}, fmt.Errorf("warm-up message: %w", err)
		}
	}
	res := smtpResult{}
	lats := make([][]time.Duration, n)
	errs := make([]error, n)
	pcpu0, _ := cpuTime(p.pid)
	var wg sync.WaitGroup
	start := time.Now()
	for i, c := range clients {
		count := e.o.smtpMessages / n
		if i < e.o.smtpMessages%n {
			count++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range count {
				t := time.Now()
				if err := sendOne(c, msg); err != nil {
					errs[i] = err
					return
				}
				lats[i] = append(lats[i], time.Since(t))
			}
		}()
	}
	wg.Wait()
	res.wall = time.Since(start)
	pcpu1, _ := cpuTime(p.pid)
	if m != direct {
		res.cpuProxy = pcpu1 - pcpu0
	}
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	for _, l := range lats {
		res.lat = append(res.lat, l...)
	}
	res.bytes = int64(e.o.smtpMessages) * int64(len(msg))
	for _, c := range clients {
		c.Quit()
	}
	return res, nil
}

// smtpBig sends one big message on a session that has sent a small one.
func (e *env) smtpBig(p *proxyProc, m mode, big, small []byte) (smtpResult, error) {
	c, err := e.smtpClient(p, m)
	if err != nil {
		return smtpResult{}, err
	}
	defer c.Close()
	if err := sendOne(c, small); err != nil {
		return smtpResult{}, fmt.Errorf("warm-up message: %w", err)
	}
	pcpu0, _ := cpuTime(p.pid)
	start := time.Now()
	if err := sendOne(c, big); err != nil {
		return smtpResult{}, err
	}
	res := smtpResult{wall: time.Since(start), bytes: int64(len(big))}
	pcpu1, _ := cpuTime(p.pid)
	if m != direct {
		res.cpuProxy = pcpu1 - pcpu0
	}
	c.Quit()
	return res, nil
}
