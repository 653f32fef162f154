package daemon

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/http"
	"strings"
	"sync"

	"github.com/emersion/go-smtp"

	"mailproxy/auth"
	"mailproxy/config"
	"mailproxy/graph"
	"mailproxy/oauth"
	"mailproxy/spool"
	"mailproxy/submit"
)

// smtpOpener is the SMTP front's opener: Graph for the accounts that send
// through it, nil (the upstream SMTP client) for the others. The Graph
// session lives as long as the client's SMTP session, not as long as the
// opening's deadline; the front closes it when the session ends.
func (d *Daemon) smtpOpener(g *auth.Grant) submit.Opener {
	a := d.Config().Account(g.Username)
	if a == nil || a.SendVia != config.SendViaGraph {
		return nil
	}
	tokens := g.Tokens
	return func(ctx context.Context, _, _ string) (submit.Submitter, error) {
		return d.graphs.session(context.WithoutCancel(ctx), a, tokens)
	}
}

// spoolAccount is what the spool's workers need for account a: the SMTP
// client (open) with the account's tokens, or, when it sends through
// Graph, Graph sessions with its Graph tokens (which the workers then
// fetch and refresh; the session uses the same source).
func (d *Daemon) spoolAccount(a *config.Account, identity string, tokens spool.TokenSource, open submit.Opener) *spool.Account {
	if a.SendVia != config.SendViaGraph {
		return &spool.Account{Identity: identity, Tokens: tokens, Open: open}
	}
	gt, ok := tokens.(graphTokens)
	if !ok {
		return &spool.Account{Identity: identity, Tokens: tokens, Open: func(context.Context, string, string) (submit.Submitter, error) {
			return nil, errNoGraphTokens
		}}
	}
	return &spool.Account{Identity: identity, Tokens: gt.Graph(), Open: func(ctx context.Context, _, _ string) (submit.Submitter, error) {
		return d.graphs.session(ctx, a, tokens)
	}}
}

// graphTokens is what a token source of oauth offers for Graph: the
// delegated Source and the app-only AppSource both do.
type graphTokens interface {
	Graph() *oauth.Source
}

// graphSenders keeps one graph.Sender per account that sends through
// Microsoft Graph (send_via = "graph"), for the SMTP front and the spool
// alike. Every sender shares one graph.Limits, so that the four requests
// per mailbox hold across sessions and accounts.
type graphSenders struct {
	logger *slog.Logger
	limits *graph.Limits

	mu      sync.Mutex // protects senders, clients
	senders map[string]*graphSender
	clients map[*config.Provider]*http.Client // by provider: its roots (ca_file)
}

type graphSender struct {
	account *config.Account // the config it was made for
	tokens  *oauth.Source
	sender  *graph.Sender
}

func newGraphSenders(logger *slog.Logger) *graphSenders {
	return &graphSenders{
		logger:  logger,
		limits:  graph.NewLimits(graph.Concurrency),
		senders: map[string]*graphSender{},
		clients: map[*config.Provider]*http.Client{},
	}
}

// errNoGraphTokens: the account's token source cannot give Graph tokens.
var errNoGraphTokens = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 5},
	Message: "this account cannot get Microsoft Graph tokens; the admin should check the proxy log"}

// session opens a Graph session for account a, whose Outlook token source
// is tokens (what the login or the spool holds). The sender is made once
// per account and made again when the config or the token source changed.
func (gs *graphSenders) session(ctx context.Context, a *config.Account, tokens any) (*graph.Session, error) {
	gt, ok := tokens.(graphTokens)
	if !ok {
		gs.logger.Error("send_via = \"graph\" but the account's token source has no Graph source", "account", a.Username)
		return nil, errNoGraphTokens
	}
	src := gt.Graph()
	key := strings.ToLower(a.Username)
	gs.mu.Lock()
	defer gs.mu.Unlock()
	if s := gs.senders[key]; s != nil && s.account == a && s.tokens == src {
		return s.sender.NewSession(ctx), nil
	}
	mailbox := a.Mailbox
	if mailbox == "" {
		mailbox = a.Username
	}
	s := &graphSender{account: a, tokens: src, sender: graph.NewSender(mailbox, src, graph.Options{
		BaseURL:       a.Provider.GraphURL,
		HTTPClient:    gs.clientLocked(a.Provider),
		KeepSentItems: a.SaveToSentItems,
		Limits:        gs.limits,
		Username:      a.Username,
		Logger:        gs.logger.With("account", a.Username),
	})}
	gs.senders[key] = s
	return s.sender.NewSession(ctx), nil
}

// clientLocked is the HTTP client for a provider's Graph: strict TLS with
// the system roots plus ca_file.
func (gs *graphSenders) clientLocked(p *config.Provider) *http.Client {
	if c := gs.clients[p]; c != nil {
		return c
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: p.RootCAs, MinVersion: tls.VersionTLS12}
	tr.MaxIdleConnsPerHost = graph.Concurrency
	c := &http.Client{Transport: tr}
	gs.clients[p] = c
	return c
}

// forget drops the senders of accounts that are gone or changed (reload);
// their live sessions finish with the old sender.
func (gs *graphSenders) forget(cfg *config.Config) {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	for key, s := range gs.senders {
		if a := cfg.Account(key); a != s.account {
			delete(gs.senders, key)
		}
	}
	clear(gs.clients)
}
