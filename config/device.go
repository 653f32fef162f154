package config

import (
	"fmt"
	"net/netip"
)

// Sender repair modes of [[device]].
const (
	RepairKeep    = "keep"
	RepairAccount = "account"
	RepairFix     = "fix"
)

// Device is one [[device]]: a sender that cannot (or should not) log in,
// recognised by its address, whose mail goes through the spool and is
// sent with Account's tokens.
type Device struct {
	Name         string
	From         []netip.Prefix // masked, IPv4 as 4-byte
	Account      *Account       // seal = "service" or client_credentials
	EnvelopeFrom string         // RepairKeep or RepairAccount
	HeaderFrom   string         // RepairKeep, RepairFix or RepairAccount
	Username     string         // "" = no credential: recognised by address only
	PasswordHash string         // Argon2id PHC; set exactly when Username is
}

// String names the device, so that printing it never shows its hash.
func (d Device) String() string { return d.Name }

// DeviceFrom returns the device whose from networks hold ip, the most
// specific network first, or nil.
func (c *Config) DeviceFrom(ip netip.Addr) *Device {
	ip = ip.Unmap().WithZone("")
	var best *Device
	bits := -1
	for _, d := range c.Devices {
		for _, p := range d.From {
			if p.Contains(ip) && p.Bits() > bits {
				best, bits = d, p.Bits()
			}
		}
	}
	return best
}

// Device returns the device with this credential username (compared
// case-insensitively), or nil.
func (c *Config) Device(username string) *Device {
	for _, d := range c.Devices {
		if d.Username != "" && foldUser(d.Username) == foldUser(username) {
			return d
		}
	}
	return nil
}

type rawDevice struct {
	Name         val `toml:"name"`
	From         val `toml:"from"`
	Account      val `toml:"account"`
	EnvelopeFrom val `toml:"envelope_from"`
	HeaderFrom   val `toml:"header_from"`
	Username     val `toml:"username"`
	PasswordHash val `toml:"password_hash"`
}

func (c *checker) devices(rs []rawDevice, cfg *Config) {
	names := map[string]int{}
	users := map[string]int{}
	for i := range rs {
		base := fmt.Sprintf("device[%d]", i)
		k := func(name string) string { return base + "." + name }
		r := &rs[i]
		d := &Device{}

		var ok bool
		if d.Name, ok = c.name(r.Name, k("name"), "required: the name the delivery log and the page show", "'.', '-' and '_'"); ok {
			if j, dup := names[d.Name]; dup {
				c.errorf(k("name"), "%s is already the name of device[%d]", q(d.Name), j)
			}
			names[d.Name] = i
		}
		d.From = c.deviceFrom(r.From, k("from"), cfg.Security.AllowFrom)
		d.Account = c.deviceAccount(r.Account, k("account"), cfg)
		d.EnvelopeFrom, d.HeaderFrom = c.senderRepair(r, base)

		if d.Username, d.PasswordHash, ok = c.deviceLogin(r, base); ok {
			f := foldUser(d.Username)
			if cfg.Account(d.Username) != nil {
				c.errorf(k("username"), "%s is also an [[account]] username; a device's login must be its own", q(d.Username))
			} else if j, dup := users[f]; dup {
				c.errorf(k("username"), "%s is already device[%d]'s username", q(d.Username), j)
			}
			users[f] = i
		}
		cfg.Devices = append(cfg.Devices, d)
	}
}

// deviceFrom reads a device's networks, which security.allow_from must
// cover.
func (c *checker) deviceFrom(v val, key string, allowFrom []netip.Prefix) []netip.Prefix {
	from := c.prefixes(v, key, nil)
	if len(from) == 0 && !c.bad[key] {
		c.errorf(key, "required: the device's addresses or networks, e.g. [\"192.168.1.50\"]")
	}
	for j, p := range from {
		if !coveredBy(p, allowFrom) && !c.bad["security.allow_from"] {
			c.errorf(fmt.Sprintf("%s[%d]", key, j), "%s is outside security.allow_from, so the device could not connect; add it there", p)
		}
	}
	return from
}

// deviceAccount reads the account a device sends as: one whose tokens open
// without a client's password.
func (c *checker) deviceAccount(v val, key string, cfg *Config) *Account {
	name := c.str(v, key, "")
	switch a := cfg.Account(name); {
	case c.bad[key]:
	case name == "":
		c.errorf(key, "required: the [[account]] whose mailbox sends the device's mail")
	case a == nil:
		c.errorf(key, "no [[account]] has username %s", q(name))
	case a.Flow != FlowClientCredentials && a.Seal != SealService:
		c.errorf(key, "account %s has seal = %q: its tokens open only with a client's password, which a device never gives; set seal = \"service\" on that account (then `mailproxy login` it again) or use flow = \"client_credentials\"", q(a.Username), a.Seal)
	default:
		return a
	}
	return nil
}

// senderRepair reads a device's envelope_from and header_from modes.
func (c *checker) senderRepair(r *rawDevice, base string) (envelopeFrom, headerFrom string) {
	envKey, headKey := base+".envelope_from", base+".header_from"
	envelopeFrom = c.strDef(r.EnvelopeFrom, envKey, RepairAccount)
	if envelopeFrom != RepairKeep && envelopeFrom != RepairAccount && !c.bad[envKey] {
		c.errorf(envKey, "%s: use \"keep\" or \"account\"", q(envelopeFrom))
	}
	headerFrom = c.strDef(r.HeaderFrom, headKey, RepairFix)
	switch headerFrom {
	case RepairKeep, RepairFix, RepairAccount:
	default:
		if !c.bad[headKey] {
			c.errorf(headKey, "%s: use \"keep\", \"fix\" or \"account\"", q(headerFrom))
		}
	}
	return envelopeFrom, headerFrom
}

// deviceLogin reads a device's own credential: username and password_hash,
// both or neither. ok says that there is one, to be compared with the
// other logins.
func (c *checker) deviceLogin(r *rawDevice, base string) (username, hash string, ok bool) {
	userKey, hashKey := base+".username", base+".password_hash"
	username = c.str(r.Username, userKey, "")
	hash = c.phc(r.PasswordHash, hashKey)
	switch {
	case c.bad[userKey] || c.bad[hashKey]:
	case username != "" && hash == "":
		c.errorf(hashKey, "required with username: the device's own password, hashed with `mailproxy hash-password` (never a Microsoft password)")
	case username == "" && hash != "":
		c.errorf(userKey, "required with password_hash: the name the device logs in with")
	case username != "":
		ok = true
	}
	return username, hash, ok
}

// coveredBy reports whether every address of p is in one of the networks.
func coveredBy(p netip.Prefix, nets []netip.Prefix) bool {
	for _, n := range nets {
		if n.Bits() <= p.Bits() && n.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// deviceNetworks are the networks of devices without a credential: they
// send no password, so a plain listener may serve them.
func deviceNetworks(cfg *Config) []netip.Prefix {
	var out []netip.Prefix
	for _, d := range cfg.Devices {
		if d.Username == "" {
			out = append(out, d.From...)
		}
	}
	return out
}
