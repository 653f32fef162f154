package spool

import (
	"bufio"
	"bytes"
	"io"
	"net/mail"
	"strings"
)

// Sender repair modes, as in [[device]] envelope_from and header_from.
const (
	RepairKeep    = "keep"
	RepairAccount = "account"
	RepairFix     = "fix"
)

// maxRepairHeader bounds the header block read for repair; a longer one is
// relayed untouched.
const maxRepairHeader = 256 << 10

// EnvelopeFrom returns the MAIL FROM to send upstream for a device that
// gave from. With mode "account" a sender other than the mailbox (the one
// address the mailbox may surely send as) becomes the mailbox, a null
// sender included: Exchange would refuse it.
func EnvelopeFrom(mode, from, mailbox string) string {
	if mode == RepairKeep || sameAddr(from, mailbox) {
		return from
	}
	return mailbox
}

// RepairHeader returns the message read from r with its From (and, for
// mode "account", Reply-To) fields repaired; every other header field and
// the body pass byte for byte. envFrom is the MAIL FROM sent upstream, the
// sender of last resort for a message with no usable From.
//
//   - keep: nothing changes.
//   - fix: a missing From is added; a malformed one (old printers write
//     "From: a@b <a@b>") is rebuilt from the address in it; a well-formed
//     one is left alone.
//   - account: From becomes the mailbox, keeping the display name, and
//     Reply-To is set to the original address when it was one and there
//     is no Reply-To yet.
func RepairHeader(r io.Reader, mode, envFrom, mailbox string) io.Reader {
	if mode == RepairKeep {
		return r
	}
	br := bufio.NewReaderSize(r, 32<<10)
	var head []byte
	for len(head) < maxRepairHeader {
		line, err := br.ReadSlice('\n')
		head = append(head, line...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil || isBlank(line) {
			break
		}
	}
	if len(head) >= maxRepairHeader {
		return io.MultiReader(bytes.NewReader(head), br)
	}
	return io.MultiReader(bytes.NewReader(repairFields(head, mode, envFrom, mailbox)), br)
}

func isBlank(line []byte) bool {
	return len(line) == 1 && line[0] == '\n' || len(line) == 2 && line[0] == '\r' && line[1] == '\n'
}

// field is one header field with its raw bytes (folded lines included).
type field struct {
	name string // lower case; "" for the blank line or stray text
	raw  []byte
}

func splitFields(head []byte) []field {
	var fs []field
	for len(head) > 0 {
		i := bytes.IndexByte(head, '\n')
		if i < 0 {
			i = len(head) - 1
		}
		line := head[:i+1]
		head = head[i+1:]
		if (line[0] == ' ' || line[0] == '\t') && len(fs) > 0 && fs[len(fs)-1].name != "" {
			fs[len(fs)-1].raw = append(fs[len(fs)-1].raw, line...)
			continue
		}
		name := ""
		if c := bytes.IndexByte(line, ':'); c > 0 && !isBlank(line) {
			name = strings.ToLower(strings.TrimSpace(string(line[:c])))
		}
		fs = append(fs, field{name: name, raw: append([]byte(nil), line...)})
	}
	return fs
}

// value is a field's unfolded value.
func (f field) value() string {
	_, v, _ := bytes.Cut(f.raw, []byte{':'})
	s := strings.ReplaceAll(string(v), "\r\n", "")
	s = strings.ReplaceAll(s, "\n", "")
	return strings.TrimSpace(s)
}

func repairFields(head []byte, mode, envFrom, mailbox string) []byte {
	fs := splitFields(head)
	sf := scanSender(fs)
	from, replyTo, change := sf.repaired(mode, envFrom, mailbox)
	if !change {
		return head
	}
	eol := lineEnd(head)
	add := []byte("From: " + from.String() + eol)
	if replyTo != "" {
		add = append(add, "Reply-To: "+replyTo+eol...)
	}
	return placeFrom(fs, sf.fromAt, add, eol)
}

// lineEnd is the header's line ending: that of its first line.
func lineEnd(head []byte) string {
	if i := bytes.IndexByte(head, '\n'); i >= 0 && (i == 0 || head[i-1] != '\r') {
		return "\n"
	}
	return "\r\n"
}

// senderFields is what a header says about its sender.
type senderFields struct {
	fromAt     int           // the first From field's index, -1 for none
	froms      []string      // every From field's value
	hasReplyTo bool          // there is a Reply-To field
	orig       *mail.Address // what the From said, salvaged if malformed
	wellFormed bool          // one From, and it parses
}

func scanSender(fs []field) senderFields {
	sf := senderFields{fromAt: -1}
	for i, f := range fs {
		switch f.name {
		case "from":
			if sf.fromAt < 0 {
				sf.fromAt = i
			}
			sf.froms = append(sf.froms, f.value())
		case "reply-to":
			sf.hasReplyTo = true
		}
	}
	if len(sf.froms) == 1 {
		if list, err := mail.ParseAddressList(sf.froms[0]); err == nil && len(list) >= 1 {
			sf.orig, sf.wellFormed = list[0], true
		}
	}
	if sf.orig == nil && len(sf.froms) > 0 {
		sf.orig = salvage(sf.froms[0])
	}
	return sf
}

// repaired returns the From that mode asks for and the Reply-To to add
// ("" for none); change is false when the header stays as it is.
func (sf senderFields) repaired(mode, envFrom, mailbox string) (from *mail.Address, replyTo string, change bool) {
	switch mode {
	case RepairFix:
		if sf.wellFormed {
			return nil, "", false
		}
		from = sf.orig
		if from == nil {
			fallback := envFrom
			if fallback == "" {
				fallback = mailbox
			}
			from = &mail.Address{Address: fallback}
		}
		return from, "", true
	case RepairAccount:
		from = &mail.Address{Address: mailbox}
		orig := sf.orig
		if orig != nil {
			from.Name = orig.Name
			if !sf.hasReplyTo && !sameAddr(orig.Address, mailbox) {
				replyTo = (&mail.Address{Address: orig.Address}).String()
			}
		}
		if sf.wellFormed && orig != nil && len(sf.froms) == 1 && from.Name == orig.Name && sameAddr(orig.Address, mailbox) {
			return nil, "", false
		}
		return from, replyTo, true
	}
	return nil, "", false
}

// placeFrom writes the fields back with add (the new From, and Reply-To)
// in place of the first From, or else before the blank line or at the
// end; a second From goes: RFC 5322 allows one.
func placeFrom(fs []field, fromAt int, add []byte, eol string) []byte {
	var out []byte
	placed := false
	for i, f := range fs {
		if f.name == "from" {
			if i == fromAt {
				out = append(out, add...)
				placed = true
			}
			continue
		}
		if !placed && (f.name == "" && isBlank(f.raw) || i == len(fs)-1 && f.name == "") {
			out = append(out, add...)
			placed = true
		}
		out = append(out, f.raw...)
	}
	if !placed {
		if len(out) > 0 && out[len(out)-1] != '\n' {
			out = append(out, eol...)
		}
		out = append(out, add...)
	}
	return out
}

// salvage finds the address in a malformed From value: the last <...>
// holding an @, else the first word with an @; the text before it is the
// display name unless it only repeats the address.
func salvage(v string) *mail.Address {
	var addr, name string
	if lt := strings.LastIndexByte(v, '<'); lt >= 0 {
		if gt := strings.IndexByte(v[lt:], '>'); gt > 0 && strings.Contains(v[lt:lt+gt], "@") {
			addr = strings.TrimSpace(v[lt+1 : lt+gt])
			name = strings.TrimSpace(v[:lt])
		}
	}
	if addr == "" {
		words := strings.Fields(v)
		for i, w := range words {
			w = strings.Trim(w, "<>\"',;()")
			if looksLikeAddr(w) {
				addr = w
				name = strings.Join(append(append([]string{}, words[:i]...), words[i+1:]...), " ")
				break
			}
		}
	}
	if !looksLikeAddr(addr) {
		return nil
	}
	name = strings.Trim(name, "\"' ")
	if sameAddr(name, addr) {
		name = ""
	}
	return &mail.Address{Name: name, Address: addr}
}
