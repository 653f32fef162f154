package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"mailproxy/auth/phc"
)

// The checks of single values: each reads one key, reports what is wrong
// with it under its name, and returns the value or the default.

func (c *checker) str(v val, key, def string) string {
	if !v.set {
		return def
	}
	s, ok := v.v.(string)
	if !ok {
		c.errorf(key, "must be a string, not %s", tomlType(v.v))
		return def
	}
	if hasControl(s) {
		c.errorf(key, "must not contain control characters")
		return def
	}
	return s
}

// strDef is str for keys where "" means the default.
func (c *checker) strDef(v val, key, def string) string {
	if s := c.str(v, key, def); s != "" {
		return s
	}
	return def
}

func hasControl(s string) bool {
	return strings.ContainsFunc(s, unicode.IsControl)
}

// path reads a file name, resolved against the config's directory.
func (c *checker) path(v val, key string) string {
	s := c.str(v, key, "")
	if s != "" && c.dir != "" && !filepath.IsAbs(s) {
		s = filepath.Join(c.dir, s)
	}
	return s
}

func (c *checker) boolean(v val, key string, def bool) bool {
	if !v.set {
		return def
	}
	b, ok := v.v.(bool)
	if !ok {
		c.errorf(key, "must be true or false, not %s", tomlType(v.v))
		return def
	}
	return b
}

func (c *checker) integer(v val, key string, def, lo, hi int64) int64 {
	if !v.set {
		return def
	}
	n, ok := v.v.(int64)
	switch {
	case !ok:
		c.errorf(key, "must be an integer, not %s", tomlType(v.v))
	case n < lo || n > hi:
		c.errorf(key, "%d is out of range: use %d to %d", n, lo, hi)
	default:
		return n
	}
	return def
}

// duration reads a positive duration written as a string with a unit.
func (c *checker) duration(v val, key string, def time.Duration) time.Duration {
	if !v.set {
		return def
	}
	switch x := v.v.(type) {
	case string:
		d, err := time.ParseDuration(x)
		switch {
		case err != nil:
			c.errorf(key, "%s is not a duration: write e.g. \"30s\", \"15m\" or \"1h\"", q(x))
		case d <= 0:
			c.errorf(key, "%s: must be positive, e.g. \"30s\"", q(x))
		default:
			return d
		}
	case int64:
		c.errorf(key, "a bare number has no unit: write a string such as \"30s\", \"15m\" or \"1h\", not %d", x)
	default:
		c.errorf(key, "must be a duration string such as \"30s\", not %s", tomlType(v.v))
	}
	return def
}

func (c *checker) stringList(v val, key string, def []string) []string {
	if !v.set {
		return slices.Clone(def)
	}
	arr, ok := v.v.([]any)
	if !ok {
		c.errorf(key, "must be an array of strings, not %s", tomlType(v.v))
		return slices.Clone(def)
	}
	out := make([]string, 0, len(arr))
	for i, e := range arr {
		ek := fmt.Sprintf("%s[%d]", key, i)
		s, ok := e.(string)
		switch {
		case !ok:
			c.errorf(ek, "must be a string, not %s", tomlType(e))
		case hasControl(s):
			c.errorf(ek, "must not contain control characters")
		default:
			out = append(out, s)
			continue
		}
		c.bad[key] = true
	}
	if len(out) == 0 {
		return nil // one way to say "none"
	}
	return out
}

// prefixes reads a list of CIDR networks; a bare address is a network of one.
func (c *checker) prefixes(v val, key string, def []string) []netip.Prefix {
	list := c.stringList(v, key, def)
	out := make([]netip.Prefix, 0, len(list))
	for i, s := range list {
		p, err := parsePrefix(s)
		if err != nil {
			c.errorf(fmt.Sprintf("%s[%d]", key, i), "%s: %v; write a network such as \"192.168.1.0/24\" or an address", q(s), err)
			c.bad[key] = true
			continue
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, errors.New("not a CIDR network")
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), nil
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, errors.New("not an address or CIDR network")
	}
	if ip.Zone() != "" {
		return netip.Prefix{}, errors.New("zones are not allowed")
	}
	ip = ip.Unmap()
	return netip.PrefixFrom(ip, ip.BitLen()), nil
}

// listen reads a listen address; "" turns the listener off.
func (c *checker) listen(v val, key, def string) string {
	s := c.str(v, key, def)
	if s == "" || c.bad[key] {
		return s
	}
	if _, _, err := splitHostPort(s); err != nil {
		c.errorf(key, "%s: %v; write host:port, e.g. \"127.0.0.1:1143\", or \"\" for off", q(s), err)
	}
	return s
}

// splitHostPort accepts "host:port" with a numeric port and a host that is
// empty, an IP address or a host name.
func splitHostPort(s string) (string, uint16, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, errors.New("not host:port")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return "", 0, errors.New("the port must be a number from 0 to 65535")
	}
	if host != "" && !validDomain(host) {
		if _, err := netip.ParseAddr(host); err != nil {
			return "", 0, errors.New("the host is neither an IP address nor a host name")
		}
	}
	return host, uint16(n), nil
}

// phc reads an optional Argon2id password hash. Messages never show it.
func (c *checker) phc(v val, key string) string {
	s := c.str(v, key, "")
	if s == "" || c.bad[key] {
		return s
	}
	// The login check's own parser and bounds: a hash accepted here is
	// one every login can check.
	if _, err := phc.Parse(s); err != nil {
		c.errorf(key, "not an Argon2id hash like \"$argon2id$v=19$m=65536,t=3,p=2$<salt>$<hash>\" (%v); create one with `mailproxy hash-password`", err)
		return ""
	}
	return s
}

// q quotes a value for a message, shortened.
func q(s string) string {
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return strconv.Quote(s)
}
