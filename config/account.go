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

	a.Username = c.str(r.Username, k("username"), "")
	switch {
	case c.bad[k("username")]:
		a.Username = ""
	case a.Username == "":
		c.errorf(k("username"), "required: what the mail client logs in with")
	case strings.TrimSpace(a.Username) != a.Username || len(a.Username) > 256:
		c.errorf(k("username"), "%s: no leading or trailing spaces, at most 256 bytes", q(a.Username))
		a.Username = ""
	}

	switch name := c.str(r.Provider, k("provider"), ""); {
	case c.bad[k("provider")]:
	case name != "":
		if a.Provider = cfg.Provider(name); a.Provider == nil {
			c.errorf(k("provider"), "no [[provider]] is named %s", q(name))
		}
	case len(cfg.Providers) == 1:
		a.Provider = cfg.Providers[0]
	case len(cfg.Providers) == 0:
		c.errorf(k("provider"), "there is no [[provider]] to use")
	default:
		c.errorf(k("provider"), "required when there are several [[provider]] tables")
	}

	a.Mailbox = c.strDef(r.Mailbox, k("mailbox"), a.Username)
	if !c.bad[k("mailbox")] && a.Mailbox != "" {
		at := strings.LastIndexByte(a.Mailbox, '@')
		switch {
		case at <= 0 || at == len(a.Mailbox)-1:
			what := "mailbox"
			if a.Mailbox == a.Username {
				what = "the username (the default mailbox)"
			}
			c.errorf(k("mailbox"), "%s %s is not an email address; set mailbox to the address to open upstream", what, q(a.Mailbox))
		case strings.ContainsFunc(a.Mailbox, unicode.IsSpace):
			c.errorf(k("mailbox"), "%s must not contain spaces", q(a.Mailbox))
		}
	}

	a.Flow = c.strDef(r.Flow, k("flow"), FlowAuthCode)
	switch a.Flow {
	case FlowAuthCode, FlowDevice, FlowClientCredentials:
	default:
		if !c.bad[k("flow")] {
			c.errorf(k("flow"), "%s is not a flow: use authcode, device or client_credentials", q(a.Flow))
		}
	}

	c.accountSeal(r, a, base)
	c.accountGraph(base, r, a)
	a.PasswordHash = c.phc(r.PasswordHash, k("password_hash"))
	if a.Flow == FlowClientCredentials && a.PasswordHash == "" && !c.bad[k("password_hash")] {
		c.errorf(k("password_hash"), "required for flow client_credentials: no sign-in sets a local password; create one with `mailproxy hash-password`")
	}

	p := a.Provider
	if p == nil || c.bad[k("flow")] {
		return a
	}
	pre, known := presets[p.Type]
	switch {
	case !known:
	case a.Flow == FlowDevice && !pre.deviceFlow:
		c.errorf(k("flow"), "provider %s is of type %s, whose device flow cannot grant mail access: use authcode", q(p.Name), p.Type)
	case a.Flow == FlowDevice && p.DeviceAuthURL == "":
		c.errorf(k("flow"), "provider %s has no device_auth_url", q(p.Name))
	case a.Flow == FlowClientCredentials && !pre.appOnlyAllowed:
		c.errorf(k("flow"), "provider %s is of type %s, which has no app-only mail access: use authcode", q(p.Name), p.Type)
	case a.Flow == FlowClientCredentials && p.ClientSecret == "":
		c.errorf(k("flow"), "client_credentials needs provider %s to have client_secret or client_secret_file", q(p.Name))
	case a.Flow == FlowClientCredentials && len(p.AppScopes) == 0:
		c.errorf(k("flow"), "client_credentials needs provider %s to have app_scopes", q(p.Name))
	}
	return a
}

func (c *checker) accountSeal(r *rawAccount, a *Account, base string) {
	a.Seal = c.strDef(r.Seal, base+".seal", SealPassword)
	if a.Seal != SealPassword && a.Seal != SealService && !c.bad[base+".seal"] {
		c.errorf(base+".seal", "%s: use \"password\" or \"service\"", q(a.Seal))
	}
	a.Spool = c.boolean(r.Spool, base+".spool", false)
}
