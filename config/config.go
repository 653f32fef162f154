// Package config owns the mailproxy configuration file: it decodes the TOML
// text into a raw struct, rejects unknown keys, fills defaults and provider
// presets, reads the files the config points at (client secrets, extra CA
// roots) and returns a validated, typed Config.
//
// Every error names the key it is about, in the form the file spells it with
// 0-based indexes for arrays of tables ("account[1].flow",
// "security.allow_from[2]"), and the line it is on when that is known.
// Errors never contain a client secret or a password hash.
//
// config imports nothing of mailproxy's own packages.
package config

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Account flows.
const (
	FlowAuthCode          = "authcode"           // browser sign-in, authorization code + PKCE
	FlowDevice            = "device"             // device code flow
	FlowClientCredentials = "client_credentials" // app-only token, no user sign-in
)

// Provider types.
const (
	TypeOffice365 = "office365" // Microsoft 365 work or school accounts
	TypeOutlook   = "outlook"   // Microsoft personal accounts (outlook.com)
	TypeGmail     = "gmail"
	TypeCustom    = "custom" // every endpoint given explicitly
)

// Log formats.
const (
	LogText = "text"
	LogJSON = "json"
)

// FallbackMaxMessageBytes is the SMTP message size limit used when
// smtp.max_message_bytes is 0 and the upstream does not advertise SIZE.
// It is Exchange Online's default send limit.
const FallbackMaxMessageBytes = 35 << 20

// Config is a validated configuration. It is not modified after Parse and is
// safe for concurrent reads.
type Config struct {
	StateDir        string        // absolute when loaded with Load
	ShutdownTimeout time.Duration // how long SIGTERM waits for sessions to finish
	IMAP            IMAP
	SMTP            SMTP
	POP3            POP3
	TLS             TLS
	Admin           Admin
	Security        Security
	Log             Log
	Providers       []*Provider // in file order
	Accounts        []*Account  // in file order
	Devices         []*Device   // in file order
	Spool           Spool
	Tokens          Tokens

	byUser map[string]*Account // key: foldUser(Username)
}

// IMAP holds the keys of the file's imap table. An empty listen address
// means that listener is off.
type IMAP struct {
	Listen         string // plain, STARTTLS when TLS is configured
	ListenTLS      string // implicit TLS
	PreAuthTimeout time.Duration
	IdleTimeout    time.Duration // >= 29m (RFC 2177)
	MaxLine        int           // bytes, before authentication
	MaxLiteral     int           // bytes, before authentication
	TLSMinVersion  uint16        // tls.VersionTLS10 ... VersionTLS13
}

// SMTP holds the keys of the file's smtp table. An empty listen address
// means that listener is off.
type SMTP struct {
	Listen    string
	ListenTLS string
	Domain    string // the name in our greeting and EHLO reply
	// MaxMessageBytes is the SIZE we advertise; 0 means take the upstream's
	// SIZE, or FallbackMaxMessageBytes when it has none.
	MaxMessageBytes    int64
	MaxRecipients      int
	ReadTimeout        time.Duration // covers the whole DATA phase
	WriteTimeout       time.Duration
	TLSMinVersion      uint16        // tls.VersionTLS10 ... VersionTLS13
	PreAuthTimeout     time.Duration // from connect to a login, absolute
	MaxPreAuthCommands int           // commands before a login
}

// TLS holds the keys of the file's tls table: the certificate of our own
// listeners.
type TLS struct {
	CertFile   string
	KeyFile    string
	SelfSigned bool // generate a self-signed certificate at start
}

// Enabled reports whether the local listeners have a certificate.
func (t TLS) Enabled() bool { return t.CertFile != "" || t.SelfSigned }

// Admin holds the keys of the file's admin table.
type Admin struct {
	Listen       string // "" = off
	PasswordHash string // Argon2id PHC string; "" = no password (loopback only)
	// Hostnames are the extra names (or addresses) the page answers to,
	// lowercased, without port; see AllowedHosts.
	Hostnames []string
}

// Security holds the keys of the file's security table.
type Security struct {
	AllowFrom             []netip.Prefix // who may connect at all; masked, IPv4 as 4-byte
	AllowPlaintextFrom    []netip.Prefix // who may send a password without TLS, besides loopback
	MaxConnections        int
	MaxConnectionsPerIP   int
	UpstreamTimeout       time.Duration // dial + TLS + authentication
	LockoutFailures       int           // 0 = no lockout
	LockoutWindow         time.Duration
	LockoutDuration       time.Duration
	LockoutAddrFailures   int // failures from one address over all usernames before it is blocked
	MaxPreAuthConns       int // per IMAP and SMTP listener: connections that have not logged in yet
	MaxUpstreamPerMailbox int
}

// AllowedFrom reports whether a client at ip may connect.
func (s Security) AllowedFrom(ip netip.Addr) bool {
	return containsAddr(s.AllowFrom, ip)
}

// PlaintextAllowedFrom reports whether a client at ip may send a password
// without TLS. Loopback always may. Parse only checks the listener
// addresses; whoever accepts connections on a plain listener must still ask
// this for every client.
func (s Security) PlaintextAllowedFrom(ip netip.Addr) bool {
	ip = ip.Unmap().WithZone("")
	return ip.IsLoopback() || containsAddr(s.AllowPlaintextFrom, ip)
}

func containsAddr(prefixes []netip.Prefix, ip netip.Addr) bool {
	ip = ip.Unmap().WithZone("")
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Log holds the keys of the file's log table.
type Log struct {
	Format string // LogText or LogJSON
	Level  slog.Level
	// File is where the log goes instead of stderr, rotated by size;
	// "" means stderr. Absolute when loaded with Load.
	File string
}

// Provider is one [[provider]]: an app registration at an identity provider
// and the servers its tokens open. Preset values are filled in.
type Provider struct {
	Name          string
	Type          string // TypeOffice365, TypeOutlook, TypeGmail or TypeCustom
	Tenant        string // office365 and outlook only
	ClientID      string
	ClientSecret  string // from client_secret or client_secret_file; "" = public client
	AuthURL       string
	TokenURL      string
	DeviceAuthURL string // "" = no device flow
	IMAPServer    string // host:port, implicit TLS
	SMTPServer    string // host:port; 465 implicit TLS, else STARTTLS
	POP3Server    string // host:port, implicit TLS; "" = no POP3
	CAFile        string
	RedirectURL   string
	Scopes        []string // delegated flows
	AppScopes     []string // client_credentials; empty = not supported
	// RootCAs verifies the upstream servers: the system roots plus ca_file.
	// nil means the system roots.
	RootCAs *x509.CertPool

	// Sending through Microsoft Graph and the clouds (config/graph.go).
	Cloud           string   // office365: CloudGlobal...; "" for other types
	SendVia         string   // SendViaSMTP or SendViaGraph, for accounts that do not choose
	GraphURL        string   // Graph root without a path, e.g. "https://graph.microsoft.com"; "" = none
	GraphScopes     []string // delegated Graph scopes; also in Scopes when an account sends through Graph
	GraphAppScopes  []string // client credentials scope for Graph: GraphURL's origin + "/.default"
	SaveToSentItems bool     // Graph: keep a copy in Sent Items (default true)
	// MinTokenLifetime: hand out a token only with this much life left
	// (15 minutes for High Volume Email); 0 = no minimum.
	MinTokenLifetime time.Duration
}

// String returns the provider name, so that printing a Provider never shows
// its client secret.
func (p Provider) String() string { return p.Name }

// GoString is like String, for %#v.
func (p Provider) GoString() string { return fmt.Sprintf("config.Provider{Name: %q}", p.Name) }

// Account is one [[account]].
type Account struct {
	Username     string // what the legacy client logs in with
	Mailbox      string // XOAUTH2 user=; the username unless set
	Flow         string // FlowAuthCode, FlowDevice or FlowClientCredentials
	PasswordHash string // Argon2id PHC string, or ""
	Provider     *Provider
	Seal         string // SealPassword or SealService
	Spool        bool   // mail clients' messages go through the spool too
	// SendVia is how the account sends: its send_via, else its
	// provider's (SendViaSMTP or SendViaGraph).
	SendVia         string
	SaveToSentItems bool // Graph: its save_to_sent_items, else the provider's
}

// Account returns the account with this username, compared
// case-insensitively, or nil.
func (c *Config) Account(username string) *Account {
	if c.byUser != nil {
		return c.byUser[foldUser(username)]
	}
	// A Config built in code rather than by Parse (demo, tests).
	for _, a := range c.Accounts {
		if foldUser(a.Username) == foldUser(username) {
			return a
		}
	}
	return nil
}

// Provider returns the provider with this name, or nil.
func (c *Config) Provider(name string) *Provider {
	for _, p := range c.Providers {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// foldUser is the one notion of "same username" used for uniqueness and lookup.
func foldUser(s string) string { return strings.ToLower(s) }

// Error is one problem in a configuration. Parse and Load return a single
// *Error or several joined with errors.Join; errors.As finds them.
type Error struct {
	File string // set by Load
	Line int    // 1-based; 0 when not known
	// Key is the key the error is about, e.g. "account[1].flow"; for a TOML
	// syntax error it is the decoder's last key ("account.flow", no index)
	// or "".
	Key string
	Msg string
	Err error // underlying cause, if any; never holds a secret
}

func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		fmt.Fprintf(&b, "%s: ", e.File)
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Load reads the config file at path and parses it. Relative paths in it
// (state_dir, tls.cert_file, client_secret_file, ca_file, ...) are resolved
// against the directory of the file.
func Load(path string) (*Config, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	data, err := readFile(abs, maxConfigSize)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	return parse(data, filepath.Dir(abs), path)
}

// Parse parses and validates a config. Relative paths in it are resolved
// against dir; with dir "" they stay relative to the working directory.
// Files the config names (client_secret_file, ca_file, tls.cert_file) are
// read.
func Parse(data []byte, dir string) (*Config, error) {
	return parse(data, dir, "")
}

func parse(data []byte, dir, file string) (*Config, error) {
	c := &checker{dir: dir, bad: map[string]bool{}}
	cfg := c.run(data)
	if len(c.errs) == 0 {
		return cfg, nil
	}
	errs := make([]error, len(c.errs))
	for i, e := range c.errs {
		e.File = file
		errs[i] = e
	}
	if len(errs) == 1 {
		return nil, errs[0]
	}
	return nil, errors.Join(errs...)
}

const (
	maxConfigSize = 4 << 20  // the config file itself
	maxSecretSize = 64 << 10 // client_secret_file
	maxPEMSize    = 16 << 20 // ca_file, tls.cert_file, tls.key_file
)

// readFile reads a regular file of at most limit bytes. Refusing devices and
// FIFOs keeps a mistyped path such as /dev/zero from hanging the load.
func readFile(path string, limit int64) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return data, nil
}
