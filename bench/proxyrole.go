package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"time"

	"mailproxy/auth"
	imapfront "mailproxy/front/imap"
	smtpfront "mailproxy/front/smtp"
	"mailproxy/oauth"
	"mailproxy/upstream"
)

// proxyConfig is what the orchestrator hands a proxy process on its first
// stdin line.
type proxyConfig struct {
	IMAPUpstream string         `json:"imap_upstream"`
	SMTPUpstream string         `json:"smtp_upstream"`
	CAPEM        string         `json:"ca_pem"`
	TokenURL     string         `json:"token_url"`
	RefreshToken string         `json:"refresh_token"`
	Accounts     []proxyAccount `json:"accounts"`
	LogFile      string         `json:"log_file"`
	// SMTPPrototype starts the pass-through SMTP experiment (smtpproto.go)
	// on a third listener.
	SMTPPrototype bool `json:"smtp_prototype"`
}

type proxyAccount struct {
	Username     string `json:"username"`
	Mailbox      string `json:"mailbox"`
	Identity     string `json:"identity"`
	PasswordHash string `json:"password_hash"`
}

type proxyHello struct {
	IMAP   string `json:"imap"`
	SMTP   string `json:"smtp"`
	PID    int    `json:"pid"`
	NoFile uint64 `json:"nofile"` // RLIMIT_NOFILE in force
	// SMTPProto is the address of the pass-through SMTP experiment.
	SMTPProto string `json:"smtp_proto,omitempty"`
	// SMTPCAPEM is the CA of the certificate the SMTP front offers with
	// STARTTLS (smtpwork.go).
	SMTPCAPEM string `json:"smtp_ca_pem"`
}

// proxyStats is the answer to "stats": the Go runtime's view of the
// proxy's memory, to explain its RSS.
type proxyStats struct {
	HeapInuse    uint64 `json:"heap_inuse"`
	HeapIdle     uint64 `json:"heap_idle"`
	HeapReleased uint64 `json:"heap_released"`
	StackInuse   uint64 `json:"stack_inuse"`
	Sys          uint64 `json:"sys"`
	HeapObjects  uint64 `json:"heap_objects"`
	NumGC        uint32 `json:"num_gc"`
	Goroutines   int    `json:"goroutines"`
}

// runProxy is the proxy process. Commands:
//
//	gc          runtime.GC and debug.FreeOSMemory, so that the next RSS
//	            reading holds live memory only
//	stats       proxyStats as JSON
//	heap FILE   write a heap profile
func runProxy(args []string, in io.Reader, out io.Writer) error {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile to `file` until quit")
	memProfile := fs.String("memprofile", "", "write a heap profile to `file` at quit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	br := bufio.NewReaderSize(in, 64<<10)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("read config line: %w", err)
	}
	var cfg proxyConfig
	if err := json.Unmarshal(line, &cfg); err != nil {
		return fmt.Errorf("decode config: %w", err)
	}

	logOut := io.Discard
	if cfg.LogFile != "" {
		f, err := os.OpenFile(cfg.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("open log: %w", err)
		}
		defer f.Close()
		logOut = f
	}
	// Info is the level a deployment runs at: a start and an end line per
	// session, nothing per chunk.
	logger := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelInfo}))

	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(cfg.CAPEM)) {
		return errors.New("no certificate in ca_pem")
	}
	up := &upstream.Upstream{
		Addr: map[string]string{imapfront.Name: cfg.IMAPUpstream, smtpfront.Name: cfg.SMTPUpstream},
		TLS:  &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
	}
	provider := &oauth.Provider{
		Name:       "bench",
		ClientID:   benchClientID,
		TokenURL:   cfg.TokenURL,
		Scopes:     benchScopes,
		HTTPClient: &http.Client{Timeout: 30 * time.Second},
	}
	// One token source for every account: they all act as benchUser (the
	// FETCH mailboxes are delegated to it), as shared mailboxes do.
	tokens := oauth.NewSource(provider, oauth.TokenSet{RefreshToken: cfg.RefreshToken, Scopes: benchScopes}, nil, logger)
	specs := make([]auth.AccountSpec, 0, len(cfg.Accounts))
	for _, a := range cfg.Accounts {
		specs = append(specs, auth.AccountSpec{
			Username:     a.Username,
			Mailbox:      a.Mailbox,
			Identity:     a.Identity,
			PasswordHash: a.PasswordHash,
			Tokens:       tokens,
			Upstream:     up,
		})
	}
	accounts := auth.NewAccounts(specs, nil)

	imapSrv := &imapfront.Server{
		Auth:   accounts,
		Logger: logger.With("proto", "imap"),
		// The idle workload puts up to 10,000 sessions on one mailbox;
		// the default cap (16, under Exchange Online's ~20) would refuse
		// them. In a deployment they would be spread over many mailboxes.
		MaxUpstreamPerMailbox: 1 << 20,
	}

	smtpSrv := &smtpfront.Server{Auth: accounts, Logger: logger.With("proto", "smtp")}
	smtpCA, err := smtpFrontTLS(smtpSrv)
	if err != nil {
		return err
	}
	imapLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	smtpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go imapSrv.Serve(imapLn)
	go smtpSrv.Serve(smtpLn)
	var protoAddr string
	if cfg.SMTPPrototype {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer ln.Close()
		protoAddr = ln.Addr().String()
		go (&protoSMTP{auth: accounts, log: logger.With("proto", "smtp-prototype")}).serve(ln)
	}

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}

	if err := writeJSONLine(out, proxyHello{
		IMAP:      imapLn.Addr().String(),
		SMTP:      smtpLn.Addr().String(),
		PID:       os.Getpid(),
		NoFile:    raiseNoFile(wantNoFile),
		SMTPProto: protoAddr,
		SMTPCAPEM: smtpCA,
	}); err != nil {
		return err
	}
	err = serveCommands(br, out, func(cmd, arg string) (string, error) {
		switch cmd {
		case "gc":
			runtime.GC()
			debug.FreeOSMemory()
			return "ok", nil
		case "stats":
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			b, err := json.Marshal(proxyStats{
				HeapInuse:    ms.HeapInuse,
				HeapIdle:     ms.HeapIdle,
				HeapReleased: ms.HeapReleased,
				StackInuse:   ms.StackInuse,
				Sys:          ms.Sys,
				HeapObjects:  ms.HeapObjects,
				NumGC:        ms.NumGC,
				Goroutines:   runtime.NumGoroutine(),
			})
			return string(b), err
		case "heap":
			return "ok", writeHeapProfile(arg)
		}
		return "", fmt.Errorf("unknown command %q", cmd)
	})
	if *memProfile != "" {
		if perr := writeHeapProfile(*memProfile); perr != nil && err == nil {
			err = perr
		}
	}
	// Relayed sessions end with Close; nothing needs draining.
	imapSrv.Close()
	smtpSrv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	imapSrv.Shutdown(ctx)
	smtpSrv.Shutdown(ctx)
	return err
}

func writeHeapProfile(path string) error {
	if path == "" {
		return errors.New("heap profile: no file name")
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	defer f.Close()
	runtime.GC()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	return nil
}
