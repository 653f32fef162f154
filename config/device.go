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

		d.Name = c.str(r.Name, k("name"), "")
		switch {
		case c.bad[k("name")]:
		case d.Name == "":
			c.errorf(k("name"), "required: the name the delivery log and the page show")
		case !validName(d.Name):
			c.errorf(k("name"), "%s: use letters, digits, '.', '-' and '_' (at most 64)", q(d.Name))
		default:
			if j, dup := names[d.Name]; dup {
				c.errorf(k("name"), "%s is already the name of device[%d]", q(d.Name), j)
			}
			names[d.Name] = i
		}

		d.From = c.prefixes(r.From, k("from"), nil)
		if len(d.From) == 0 && !c.bad[k("from")] {
			c.errorf(k("from"), "required: the device's addresses or networks, e.g. [\"192.168.1.50\"]")
		}
		for j, p := range d.From {
			if !coveredBy(p, cfg.Security.AllowFrom) && !c.bad["security.allow_from"] {
				c.errorf(fmt.Sprintf("%s[%d]", k("from"), j), "%s is outside security.allow_from, so the device could not connect; add it there", p)
			}
		}

		name := c.str(r.Account, k("account"), "")
		switch a := cfg.Account(name); {
		case c.bad[k("account")]:
		case name == "":
			c.errorf(k("account"), "required: the [[account]] whose mailbox sends the device's mail")
		case a == nil:
			c.errorf(k("account"), "no [[account]] has username %s", q(name))
		case a.Flow != FlowClientCredentials && a.Seal != SealService:
			c.errorf(k("account"), "account %s has seal = %q: its tokens open only with a client's password, which a device never gives; set seal = \"service\" on that account (then `mailproxy login` it again) or use flow = \"client_credentials\"", q(a.Username), a.Seal)
		default:
			d.Account = a
		}

		d.EnvelopeFrom = c.strDef(r.EnvelopeFrom, k("envelope_from"), RepairAccount)
		if d.EnvelopeFrom != RepairKeep && d.EnvelopeFrom != RepairAccount && !c.bad[k("envelope_from")] {
			c.errorf(k("envelope_from"), "%s: use \"keep\" or \"account\"", q(d.EnvelopeFrom))
		}
		d.HeaderFrom = c.strDef(r.HeaderFrom, k("header_from"), RepairFix)
		switch d.HeaderFrom {
		case RepairKeep, RepairFix, RepairAccount:
		default:
			if !c.bad[k("header_from")] {
				c.errorf(k("header_from"), "%s: use \"keep\", \"fix\" or \"account\"", q(d.HeaderFrom))
			}
		}

		d.Username = c.str(r.Username, k("username"), "")
		d.PasswordHash = c.phc(r.PasswordHash, k("password_hash"))
		switch {
		case c.bad[k("username")] || c.bad[k("password_hash")]:
		case d.Username != "" && d.PasswordHash == "":
			c.errorf(k("password_hash"), "required with username: the device's own password, hashed with `mailproxy hash-password` (never a Microsoft password)")
		case d.Username == "" && d.PasswordHash != "":
			c.errorf(k("username"), "required with password_hash: the name the device logs in with")
		case d.Username != "":
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
