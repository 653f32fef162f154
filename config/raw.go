package config

import (
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"
)

// The raw structs mirror the file. Their leaves are vals, so the decoder
// never stops at a wrongly typed value: the checker reports every type error
// itself, with the key and line.
type rawConfig struct {
	StateDir        val           `toml:"state_dir"`
	ShutdownTimeout val           `toml:"shutdown_timeout"`
	IMAP            rawIMAP       `toml:"imap"`
	SMTP            rawSMTP       `toml:"smtp"`
	POP3            rawPOP3       `toml:"pop3"`
	TLS             rawTLS        `toml:"tls"`
	Admin           rawAdmin      `toml:"admin"`
	Security        rawSecurity   `toml:"security"`
	Log             rawLog        `toml:"log"`
	Providers       []rawProvider `toml:"provider"`
	Accounts        []rawAccount  `toml:"account"`
	Devices         []rawDevice   `toml:"device"`
	Spool           rawSpool      `toml:"spool"`
	Tokens          rawTokens     `toml:"tokens"`
}

type rawIMAP struct {
	Listen         val `toml:"listen"`
	ListenTLS      val `toml:"listen_tls"`
	PreAuthTimeout val `toml:"preauth_timeout"`
	IdleTimeout    val `toml:"idle_timeout"`
	MaxLine        val `toml:"max_line"`
	MaxLiteral     val `toml:"max_literal"`
	TLSMinVersion  val `toml:"tls_min_version"`
}

type rawSMTP struct {
	Listen          val `toml:"listen"`
	ListenTLS       val `toml:"listen_tls"`
	Domain          val `toml:"domain"`
	MaxMessageBytes val `toml:"max_message_bytes"`
	MaxRecipients   val `toml:"max_recipients"`
	ReadTimeout     val `toml:"read_timeout"`
	WriteTimeout    val `toml:"write_timeout"`
	PreAuthTimeout  val `toml:"preauth_timeout"`
	MaxPreAuthCmds  val `toml:"max_preauth_commands"`
	TLSMinVersion   val `toml:"tls_min_version"`
}

type rawTLS struct {
	CertFile   val `toml:"cert_file"`
	KeyFile    val `toml:"key_file"`
	SelfSigned val `toml:"self_signed"`
}

type rawAdmin struct {
	Listen       val `toml:"listen"`
	PasswordHash val `toml:"password_hash"`
	Hostnames    val `toml:"hostnames"`
}

type rawSecurity struct {
	AllowFrom             val `toml:"allow_from"`
	AllowPlaintextFrom    val `toml:"allow_plaintext_from"`
	MaxConnections        val `toml:"max_connections"`
	MaxConnectionsPerIP   val `toml:"max_connections_per_ip"`
	UpstreamTimeout       val `toml:"upstream_timeout"`
	LockoutFailures       val `toml:"lockout_failures"`
	LockoutWindow         val `toml:"lockout_window"`
	LockoutDuration       val `toml:"lockout_duration"`
	LockoutAddrFailures   val `toml:"lockout_address_failures"`
	MaxPreAuthConns       val `toml:"max_preauth_connections"`
	MaxUpstreamPerMailbox val `toml:"max_upstream_per_mailbox"`
}

type rawLog struct {
	Format val `toml:"format"`
	Level  val `toml:"level"`
	File   val `toml:"file"`
}

type rawProvider struct {
	Name             val `toml:"name"`
	Type             val `toml:"type"`
	Tenant           val `toml:"tenant"`
	ClientID         val `toml:"client_id"`
	ClientSecret     val `toml:"client_secret"`
	ClientSecretFile val `toml:"client_secret_file"`
	AuthURL          val `toml:"auth_url"`
	TokenURL         val `toml:"token_url"`
	DeviceAuthURL    val `toml:"device_auth_url"`
	Scopes           val `toml:"scopes"`
	AppScopes        val `toml:"app_scopes"`
	IMAPServer       val `toml:"imap_server"`
	SMTPServer       val `toml:"smtp_server"`
	POP3Server       val `toml:"pop3_server"`
	CAFile           val `toml:"ca_file"`
	RedirectURL      val `toml:"redirect_url"`
	// config/graph.go
	SendVia         val `toml:"send_via"`
	Cloud           val `toml:"cloud"`
	GraphURL        val `toml:"graph_url"`
	SaveToSentItems val `toml:"save_to_sent_items"`
}

type rawAccount struct {
	Username     val `toml:"username"`
	Provider     val `toml:"provider"`
	Mailbox      val `toml:"mailbox"`
	Flow         val `toml:"flow"`
	PasswordHash val `toml:"password_hash"`
	Seal         val `toml:"seal"`
	Spool        val `toml:"spool"`
	// config/graph.go
	SendVia         val `toml:"send_via"`
	SaveToSentItems val `toml:"save_to_sent_items"`
}

// val is one TOML value as the decoder produced it: string, int64, float64,
// bool, time.Time, []any, []map[string]any or map[string]any.
type val struct {
	v   any
	set bool
}

// UnmarshalTOML implements toml.Unmarshaler.
func (x *val) UnmarshalTOML(v any) error {
	x.v, x.set = v, true
	return nil
}

// tomlType names the TOML type of a decoded value, for messages.
func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case time.Time:
		return "a date-time"
	case []any, []map[string]any:
		return "an array"
	case map[string]any:
		return "a table"
	}
	return "an unknown type"
}

// Sections of the file that are tables and arrays of tables.
var (
	tableSections = []string{"imap", "smtp", "pop3", "tls", "admin", "security", "log", "spool", "tokens"}
	arraySections = []string{"provider", "account", "device"}
)

// knownKeys maps a table ("" for the top level, "imap", "account", ...) to
// the key names it accepts, taken from the raw structs' tags.
var knownKeys = sync.OnceValue(func() map[string][]string {
	m := map[string][]string{}
	var walk func(table string, t reflect.Type)
	walk = func(table string, t reflect.Type) {
		for f := range t.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			m[table] = append(m[table], name)
			ft := f.Type
			if ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft != reflect.TypeFor[val]() {
				walk(name, ft)
			}
		}
	}
	walk("", reflect.TypeFor[rawConfig]())
	return m
})

// suggest returns the known key of table closest to name, or "".
func suggest(table, name string) string {
	best, bestDist := "", 3 // at most two edits away
	for _, k := range knownKeys()[table] {
		if strings.EqualFold(k, name) {
			return k
		}
		if d := editDistance(k, name); d < bestDist {
			best, bestDist = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of two short strings.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func isKnown(table, name string) bool {
	return slices.Contains(knownKeys()[table], name)
}
