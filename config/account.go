package config

import (
	"fmt"
	"strings"
	"unicode"
)

func (c *checker) accounts(rs []rawAccount, cfg *Config) {
	cfg.byUser = map[string]*Account{}
	index := map[string]int{}
	for i := range rs {
		base := fmt.Sprintf("account[%d]", i)
		a := c.account(base, &rs[i], cfg)
		if a.Username == "" {
			continue
		}
		f := foldUser(a.Username)
		if j, dup := index[f]; dup {
			c.errorf(base+".username", "%s is already account[%d] (usernames are compared case-insensitively)", q(a.Username), j)
			continue
		}
		index[f] = i
		cfg.byUser[f] = a
		cfg.Accounts = append(cfg.Accounts, a)
	}
}

func (c *checker) account(base string, r *rawAccount, cfg *Config) *Account {
	k := func(name string) string { return base + "." + name }
	a := &Account{}
	a.Username = c.accountUsername(r.Username, k("username"))
	a.Provider = c.accountProvider(r.Provider, k("provider"), cfg)
	a.Mailbox = c.accountMailbox(r.Mailbox, k("mailbox"), a.Username)
	a.Flow = c.accountFlow(r.Flow, k("flow"))
	c.accountSeal(r, a, base)
	c.accountGraph(base, r, a)
	a.PasswordHash = c.phc(r.PasswordHash, k("password_hash"))
	if a.Flow == FlowClientCredentials && a.PasswordHash == "" && !c.bad[k("password_hash")] {
		c.errorf(k("password_hash"), "required for flow client_credentials: no sign-in sets a local password; create one with `mailproxy hash-password`")
	}
	if a.Provider != nil && !c.bad[k("flow")] {
		c.flowFitsProvider(k("flow"), a.Flow, a.Provider)
	}
	return a
}

// accountUsername reads what the mail client logs in with; "" when it is
// missing or unusable.
func (c *checker) accountUsername(v val, key string) string {
	user := c.str(v, key, "")
	switch {
	case c.bad[key]:
		return ""
	case user == "":
		c.errorf(key, "required: what the mail client logs in with")
	case strings.TrimSpace(user) != user || len(user) > 256:
		c.errorf(key, "%s: no leading or trailing spaces, at most 256 bytes", q(user))
		return ""
	}
	return user
}

// accountProvider finds the account's [[provider]]: the one named, or the
// only one.
func (c *checker) accountProvider(v val, key string, cfg *Config) *Provider {
	switch name := c.str(v, key, ""); {
	case c.bad[key]:
	case name != "":
		p := cfg.Provider(name)
		if p == nil {
			c.errorf(key, "no [[provider]] is named %s", q(name))
		}
		return p
	case len(cfg.Providers) == 1:
		return cfg.Providers[0]
	case len(cfg.Providers) == 0:
		c.errorf(key, "there is no [[provider]] to use")
	default:
		c.errorf(key, "required when there are several [[provider]] tables")
	}
	return nil
}

// accountMailbox reads the address opened upstream, the username by
// default.
func (c *checker) accountMailbox(v val, key, username string) string {
	mailbox := c.strDef(v, key, username)
	if c.bad[key] || mailbox == "" {
		return mailbox
	}
	at := strings.LastIndexByte(mailbox, '@')
	switch {
	case at <= 0 || at == len(mailbox)-1:
		what := "mailbox"
		if mailbox == username {
			what = "the username (the default mailbox)"
		}
		c.errorf(key, "%s %s is not an email address; set mailbox to the address to open upstream", what, q(mailbox))
	case strings.ContainsFunc(mailbox, unicode.IsSpace):
		c.errorf(key, "%s must not contain spaces", q(mailbox))
	}
	return mailbox
}

func (c *checker) accountFlow(v val, key string) string {
	flow := c.strDef(v, key, FlowAuthCode)
	switch flow {
	case FlowAuthCode, FlowDevice, FlowClientCredentials:
	default:
		if !c.bad[key] {
			c.errorf(key, "%s is not a flow: use authcode, device or client_credentials", q(flow))
		}
	}
	return flow
}

// flowFitsProvider checks that the provider can serve the account's flow.
func (c *checker) flowFitsProvider(key, flow string, p *Provider) {
	pre, known := presets[p.Type]
	switch {
	case !known:
	case flow == FlowDevice && !pre.deviceFlow:
		c.errorf(key, "provider %s is of type %s, whose device flow cannot grant mail access: use authcode", q(p.Name), p.Type)
	case flow == FlowDevice && p.DeviceAuthURL == "":
		c.errorf(key, "provider %s has no device_auth_url", q(p.Name))
	case flow == FlowClientCredentials && !pre.appOnlyAllowed:
		c.errorf(key, "provider %s is of type %s, which has no app-only mail access: use authcode", q(p.Name), p.Type)
	case flow == FlowClientCredentials && p.ClientSecret == "":
		c.errorf(key, "client_credentials needs provider %s to have client_secret or client_secret_file", q(p.Name))
	case flow == FlowClientCredentials && len(p.AppScopes) == 0:
		c.errorf(key, "client_credentials needs provider %s to have app_scopes", q(p.Name))
	}
}

func (c *checker) accountSeal(r *rawAccount, a *Account, base string) {
	a.Seal = c.strDef(r.Seal, base+".seal", SealPassword)
	if a.Seal != SealPassword && a.Seal != SealService && !c.bad[base+".seal"] {
		c.errorf(base+".seal", "%s: use \"password\" or \"service\"", q(a.Seal))
	}
	a.Spool = c.boolean(r.Spool, base+".spool", false)
}
