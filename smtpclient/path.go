package smtpclient

import (
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-smtp"
)

// What goes between the brackets of MAIL FROM and RCPT TO is built here,
// once: go-smtp's server hands us the address with a quoted local part
// already unquoted ("john doe"@x arrives as john doe@x), so sending it as
// it came would let client text end the path and add ESMTP parameters
// (<"x> BODY=BINARYMIME y"@x> became "x> BODY=BINARYMIME y@x"). The local
// part leaves as a dot-atom when it is one, else as an RFC 5321
// Quoted-string with '"' and '\' escaped; an address no path can carry
// (control characters, a domain with spaces or brackets) is refused.

var errBadAddress = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3},
	Message: "Address cannot be sent on: it has characters no SMTP path may carry"}

// pathArg returns addr as the inside of an SMTP path; "" stays "" (the
// null reverse path <>).
func pathArg(addr string) (string, error) {
	if addr == "" {
		return "", nil
	}
	i := strings.LastIndexByte(addr, '@')
	if i <= 0 || i == len(addr)-1 {
		// Postmaster and the like have no domain; anything else without
		// one is no address we can pass on.
		if strings.EqualFold(addr, "postmaster") {
			return addr, nil
		}
		return "", errBadAddress
	}
	local, domain := addr[:i], addr[i+1:]
	if !validDomain(domain) {
		return "", errBadAddress
	}
	if isDotAtom(local) {
		return addr, nil
	}
	var b strings.Builder
	b.Grow(len(addr) + 4)
	b.WriteByte('"')
	for j := 0; j < len(local); j++ {
		c := local[j]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c >= 0x20 && c != 0x7f:
			b.WriteByte(c) // printable ASCII, or UTF-8 (RFC 6532's qtextSMTP)
		default:
			return "", errBadAddress
		}
	}
	b.WriteByte('"')
	b.WriteByte('@')
	b.WriteString(domain)
	return b.String(), nil
}

// isDotAtom reports whether s is an RFC 5321 Dot-string (UTF-8 allowed,
// RFC 6531).
func isDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 0x80:
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-/=?^_`{|}~.", c) >= 0:
		default:
			return false
		}
	}
	return utf8.ValidString(s)
}

// validDomain accepts a domain or an address literal that cannot end the
// path: no spaces, brackets but around a literal, controls or quotes.
func validDomain(d string) bool {
	if d == "" || len(d) > 255 {
		return false
	}
	lit := d[0] == '['
	if lit && d[len(d)-1] != ']' {
		return false
	}
	for i := 0; i < len(d); i++ {
		c := d[i]
		switch {
		case c <= 0x20 || c == 0x7f || c == '<' || c == '>' || c == '"' || c == '\\' || c == '@' || c == ',' || c == ';':
			return false
		case (c == '[' && i != 0) || (c == ']' && i != len(d)-1):
			return false
		case (c == '[' || c == ']') && !lit:
			return false
		}
	}
	return true
}
