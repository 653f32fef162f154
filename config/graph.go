package config

import (
	"net/url"
	"slices"
	"strings"
	"time"
)

// How an account sends (send_via).
const (
	SendViaSMTP  = "smtp"  // SMTP AUTH upstream (smtp_server)
	SendViaGraph = "graph" // Microsoft Graph sendMail / drafts
)

// Microsoft clouds (cloud, office365 providers).
const (
	CloudGlobal    = "global"   // commercial Microsoft 365, and GCC
	CloudUSGov     = "usgov"    // Microsoft 365 GCC High
	CloudUSGovDoD  = "usgovdod" // Microsoft 365 DoD
	CloudChina     = "china"    // Microsoft 365 operated by 21Vianet
	hveSMTPHost    = "smtp-hve.office365.com"
	hveMinLifetime = 15 * time.Minute
)

// msCloud is what a cloud changes: the login host, the Exchange Online
// hosts, the Graph host, and the resources scopes are named after. Sources
// in docs/ENTRA.md ("National clouds").
type msCloud struct {
	login      string // Entra ID authority host
	imap, smtp string // host:port
	pop3       string
	graph      string // Graph root, also the Graph scopes' resource
	outlook    string // resource of the delegated IMAP/SMTP/POP scopes
	outlookApp string // resource of the app-only .default scope
}

var clouds = map[string]msCloud{
	CloudGlobal: {
		login: "login.microsoftonline.com", imap: "outlook.office365.com:993", smtp: "smtp.office365.com:587",
		pop3: "outlook.office365.com:995", graph: "https://graph.microsoft.com",
		outlook: "https://outlook.office.com", outlookApp: "https://outlook.office365.com",
	},
	CloudUSGov:    nationalCloud("login.microsoftonline.us", "outlook.office365.us", "https://graph.microsoft.us"),
	CloudUSGovDoD: nationalCloud("login.microsoftonline.us", "outlook-dod.office365.us", "https://dod-graph.microsoft.us"),
	CloudChina:    nationalCloud("login.chinacloudapi.cn", "partner.outlook.cn", "https://microsoftgraph.chinacloudapi.cn"),
}

// nationalCloud is a cloud whose Exchange Online host serves IMAP (993),
// SMTP (587) and POP3 (995) and names the resource of every scope.
func nationalCloud(login, exchange, graph string) msCloud {
	return msCloud{
		login: login, imap: exchange + ":993", smtp: exchange + ":587", pop3: exchange + ":995",
		graph: graph, outlook: "https://" + exchange, outlookApp: "https://" + exchange,
	}
}

// cloudPreset rewrites an office365 preset for a cloud.
func cloudPreset(pre preset, cl msCloud) preset {
	host := func(u string) string {
		return strings.Replace(u, "login.microsoftonline.com", cl.login, 1)
	}
	pre.authURL, pre.tokenURL, pre.devURL = host(pre.authURL), host(pre.tokenURL), host(pre.devURL)
	res := func(scopes []string, from, to string) []string {
		out := make([]string, len(scopes))
		for i, s := range scopes {
			out[i] = strings.Replace(s, from, to, 1)
		}
		return out
	}
	pre.scopes = res(pre.scopes, "https://outlook.office.com", cl.outlook)
	pre.appScopes = res(pre.appScopes, "https://outlook.office365.com", cl.outlookApp)
	pre.imapServer, pre.smtpServer, pre.pop3Server = cl.imap, cl.smtp, cl.pop3
	return pre
}

// cloud reads provider.cloud and applies it to an office365 preset. It
// returns the cloud's name ("" for types without clouds).
func (c *checker) cloud(base string, r *rawProvider, typ string, pre *preset) string {
	key := base + ".cloud"
	if typ != TypeOffice365 {
		if r.Cloud.set && !c.bad[base+".type"] {
			c.errorf(key, "only type office365 has national clouds")
		}
		return ""
	}
	name := c.strDef(r.Cloud, key, CloudGlobal)
	cl, ok := clouds[name]
	if !ok {
		if !c.bad[key] {
			c.errorf(key, "%s is not a cloud: use global, usgov (GCC High), usgovdod (DoD) or china (21Vianet)", q(name))
		}
		return CloudGlobal
	}
	*pre = cloudPreset(*pre, cl)
	return name
}

// graphRoot is the default Graph root (and scope resource) of a provider:
// its cloud's for office365, the global one for outlook, none otherwise.
func graphRoot(p *Provider) string {
	if cl, ok := clouds[p.Cloud]; ok && p.Type == TypeOffice365 {
		return cl.graph
	}
	if p.Type == TypeOutlook {
		return clouds[CloudGlobal].graph
	}
	return ""
}

// graph reads a provider's Graph keys (send_via, graph_url,
// save_to_sent_items) and the HVE token rule.
func (c *checker) graph(base string, r *rawProvider, p *Provider) {
	k := func(name string) string { return base + "." + name }
	p.SendVia = c.sendVia(r.SendVia, k("send_via"), SendViaSMTP)
	p.SaveToSentItems = c.boolean(r.SaveToSentItems, k("save_to_sent_items"), true)

	def := graphRoot(p)
	p.GraphURL = strings.TrimRight(c.endpoint(r.GraphURL, k("graph_url"), def, false), "/")
	if !c.bad[k("graph_url")] && p.GraphURL != "" {
		if u, err := url.Parse(p.GraphURL); err == nil && u.Path != "" {
			c.errorf(k("graph_url"), "%s: give the root without a path (mailproxy adds /v1.0/...)", q(p.GraphURL))
		}
	}
	if p.Type != TypeGmail {
		res := graphResourceOf(p)
		p.GraphScopes = []string{res + "/Mail.Send", res + "/Mail.ReadWrite"}
		p.GraphAppScopes = []string{res + "/.default"}
	}
	if host, _, err := splitHostPort(p.SMTPServer); err == nil && strings.EqualFold(host, hveSMTPHost) {
		// High Volume Email refuses tokens about 8 minutes before they
		// expire (501 5.5.127): send only tokens with 15 minutes left.
		p.MinTokenLifetime = hveMinLifetime
	}
}

// graphResourceOf is the resource Graph scopes are named after: the
// cloud's Graph root; Microsoft Graph's own for custom providers, whose
// graph_url may point at a proxy or a test double of Graph.
func graphResourceOf(p *Provider) string {
	if root := graphRoot(p); root != "" {
		return root
	}
	return clouds[CloudGlobal].graph
}

func (c *checker) sendVia(v val, key, def string) string {
	s := c.strDef(v, key, def)
	if s != SendViaSMTP && s != SendViaGraph && !c.bad[key] {
		c.errorf(key, "%s: use \"smtp\" or \"graph\"", q(s))
		return def
	}
	return s
}

// accountGraph reads an account's send_via and save_to_sent_items
// overrides and checks that its provider can send through Graph.
func (c *checker) accountGraph(base string, r *rawAccount, a *Account) {
	k := func(name string) string { return base + "." + name }
	if a.Provider == nil {
		return
	}
	a.SendVia = c.sendVia(r.SendVia, k("send_via"), a.Provider.SendVia)
	a.SaveToSentItems = c.boolean(r.SaveToSentItems, k("save_to_sent_items"), a.Provider.SaveToSentItems)
	if a.SendVia != SendViaGraph {
		return
	}
	switch {
	case a.Provider.Type == TypeGmail:
		c.errorf(k("send_via"), "\"graph\" is Microsoft Graph; provider %s is of type gmail: use \"smtp\"", q(a.Provider.Name))
	case a.Provider.GraphURL == "":
		c.errorf(k("send_via"), "\"graph\" needs graph_url on provider %s", q(a.Provider.Name))
	}
}

// graphSignInScopes adds the Graph scopes to the sign-in scopes of every
// provider with a delegated account that sends through Graph, so that the
// consent is asked at sign-in; Mail.Send.Shared and Mail.ReadWrite.Shared
// too when such an account sends for another mailbox.
func graphSignInScopes(cfg *Config) {
	for _, a := range cfg.Accounts {
		p := a.Provider
		if p == nil || a.SendVia != SendViaGraph || a.Flow == FlowClientCredentials || len(p.GraphScopes) == 0 {
			continue
		}
		if !strings.EqualFold(a.Mailbox, a.Username) && !slices.ContainsFunc(p.GraphScopes, func(s string) bool { return strings.HasSuffix(s, ".Shared") }) {
			res := graphResourceOf(p)
			p.GraphScopes = append(p.GraphScopes, res+"/Mail.Send.Shared", res+"/Mail.ReadWrite.Shared")
		}
		scopes := slices.Clone(p.Scopes) // may be a preset's
		for _, s := range p.GraphScopes {
			if !slices.Contains(scopes, s) {
				scopes = append(scopes, s)
			}
		}
		p.Scopes = scopes
	}
}
