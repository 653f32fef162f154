package spool

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"time"
)

// dsnTarget is where a DSN about env goes: the device's envelope sender,
// or the account's mailbox when that sender was rewritten (the device's
// own address is then not one the mailbox may answer for) or is not an
// address; a null sender gets none (RFC 5321 section 4.5.5), and a DSN
// gets none.
func dsnTarget(env *Envelope) string {
	switch {
	case env.IsDSN || env.OrigFrom == "":
		return ""
	case env.Rewritten() || !looksLikeAddr(env.OrigFrom):
		return env.Mailbox
	}
	return env.OrigFrom
}

func looksLikeAddr(s string) bool {
	at := strings.LastIndexByte(s, '@')
	return at > 0 && at < len(s)-1 && !strings.ContainsAny(s, " <>\r\n")
}

// bounce queues a DSN for the recipients that failed in o and returns the
// journal event that says so.
func (w *worker) bounce(it *item, now time.Time, o *outcome) (Event, bool) {
	s := w.s
	env := it.env
	to := dsnTarget(env)
	if to == "" {
		return Event{}, false
	}
	header := s.originalHeader(env.ID)
	msg := buildDSN(dsnInfo{
		domain: s.o.Domain, from: env.Mailbox, to: to, env: env, now: now,
		failed: o.failed, reply: o.failReply, status: o.failStatus, header: header,
	})
	dsn := &Envelope{Device: env.Device, Account: env.Account, Mailbox: env.Mailbox,
		From: env.Mailbox, To: []string{to}, IsDSN: true}
	id, err := s.Enqueue(dsn, bytes.NewReader(msg))
	if err != nil {
		s.log.Error("spool: cannot queue a DSN", "id", env.ID, "to", to, "err", err)
		return Event{}, false
	}
	return Event{Time: now, ID: env.ID, Kind: EvDSN, DSN: id, DSNTo: to}, true
}

// redirectDSN sends a DSN that the device's sender could not receive to
// the account's mailbox instead, once.
func (w *worker) redirectDSN(it *item) {
	s := w.s
	env := it.env
	if len(env.To) != 1 || sameAddr(env.To[0], env.Mailbox) {
		s.log.Error("spool: a DSN could not be delivered", "id", env.ID, "to", env.To)
		return
	}
	rc, err := s.store.Open(env.ID)
	if err != nil {
		// finish() may have removed it already: the journal keeps the
		// record; nothing more to do.
		s.log.Error("spool: a DSN could not be delivered", "id", env.ID, "to", env.To)
		return
	}
	defer rc.Close()
	cp := &Envelope{Device: env.Device, Account: env.Account, Mailbox: env.Mailbox,
		From: env.Mailbox, To: []string{env.Mailbox}, IsDSN: true}
	if _, err := s.Enqueue(cp, rc); err != nil {
		s.log.Error("spool: cannot redirect a DSN to the mailbox", "id", env.ID, "err", err)
	}
}

// originalHeader returns the header block of a queued message with CRLF
// line ends, at most maxHeaderCopy bytes.
func (s *Spool) originalHeader(id string) []byte {
	rc, err := s.store.Open(id)
	if err != nil {
		return nil
	}
	defer rc.Close()
	br := bufio.NewReader(io.LimitReader(rc, maxHeaderCopy))
	var out []byte
	for {
		line, err := br.ReadSlice('\n')
		trimmed := bytes.TrimRight(line, "\r\n")
		if len(trimmed) == 0 && (len(line) > 0 || err != nil) {
			break
		}
		out = append(out, trimmed...)
		out = append(out, '\r', '\n')
		if err != nil {
			break
		}
	}
	return out
}

type dsnInfo struct {
	domain, from, to string
	env              *Envelope
	now              time.Time
	failed           []string
	reply, status    map[string]string
	header           []byte
}

// buildDSN writes an RFC 3464 delivery status notification: a
// multipart/report with a text part, the message/delivery-status part
// and the original message's header (text/rfc822-headers).
func buildDSN(d dsnInfo) []byte {
	var rnd [8]byte
	rand.Read(rnd[:])
	boundary := "dsn-" + hex.EncodeToString(rnd[:])
	var b bytes.Buffer
	crlf := func(format string, args ...any) {
		fmt.Fprintf(&b, format, args...)
		b.WriteString("\r\n")
	}
	crlf("From: Mail Delivery System <%s>", d.from)
	crlf("To: <%s>", d.to)
	crlf("Subject: Undelivered mail returned to sender")
	crlf("Date: %s", d.now.Format(time.RFC1123Z))
	crlf("Message-ID: <%s.dsn@%s>", d.env.ID, d.domain)
	crlf("Auto-Submitted: auto-replied")
	crlf("MIME-Version: 1.0")
	crlf("Content-Type: multipart/report; report-type=delivery-status;")
	crlf("\tboundary=\"%s\"", boundary)
	crlf("")
	crlf("--%s", boundary)
	crlf("Content-Type: text/plain; charset=utf-8")
	crlf("")
	crlf("mailproxy on %s could not deliver a message sent by %s", d.domain, deviceName(d.env))
	crlf("(queue id %s, received %s) to these recipients:", d.env.ID, d.env.Received.UTC().Format(time.RFC1123Z))
	crlf("")
	for _, r := range d.failed {
		crlf("  %s", r)
		crlf("    %s", oneLine(d.reply[r]))
	}
	crlf("")
	crlf("The upstream's reply is quoted as it was. The message was not retried.")
	crlf("")
	crlf("--%s", boundary)
	crlf("Content-Type: message/delivery-status")
	crlf("")
	crlf("Reporting-MTA: dns; %s", d.domain)
	crlf("X-Mailproxy-Queue-ID: %s", d.env.ID)
	crlf("Arrival-Date: %s", d.env.Received.Format(time.RFC1123Z))
	for _, r := range d.failed {
		crlf("")
		crlf("Final-Recipient: %s; %s", addrType(r), r)
		crlf("Action: failed")
		crlf("Status: %s", d.status[r])
		crlf("Diagnostic-Code: smtp; %s", oneLine(d.reply[r]))
		crlf("Last-Attempt-Date: %s", d.now.Format(time.RFC1123Z))
	}
	crlf("")
	crlf("--%s", boundary)
	crlf("Content-Type: text/rfc822-headers")
	crlf("")
	b.Write(d.header)
	crlf("")
	crlf("--%s--", boundary)
	return b.Bytes()
}

func deviceName(env *Envelope) string {
	if env.Device != "" {
		return "device " + env.Device
	}
	return "account " + env.Account
}

func addrType(addr string) string {
	for i := 0; i < len(addr); i++ {
		if addr[i] >= 0x80 {
			return "utf-8" // RFC 6533
		}
	}
	return "rfc822"
}

// oneLine makes an upstream reply fit one header line.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 900 {
		s = s[:900]
	}
	return s
}
