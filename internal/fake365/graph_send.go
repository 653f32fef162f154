package fake365

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/mail"
	"strings"
)

// Sending: sendMail, the MIME checks shared with drafts, what was sent, and
// the message as its recipients get it.

// graphMIME is a MIME message a request carried, with its addresses.
type graphMIME struct {
	data        []byte
	from        string // the From address, "" if none
	to, cc, bcc []string
}

// readMIME reads a text/plain base64 MIME body and the From, To, Cc and
// Bcc addresses of the message in it.
func (c *graphCall) readMIME() (*graphMIME, *graphErr) {
	mt, _, _ := mime.ParseMediaType(c.r.Header.Get("Content-Type"))
	if mt != "text/plain" {
		return nil, gerr(http.StatusBadRequest, "ErrorMimeContentInvalid", "MIME content must be sent as text/plain base64, not %q.", mt)
	}
	data, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(c.body)))
	if err != nil {
		return nil, gerr(http.StatusBadRequest, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")
	}
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		return nil, gerr(http.StatusBadRequest, "ErrorMimeContentInvalid", "The MIME content is not valid: %v", err)
	}
	list := func(key string) []string {
		addrs, _ := m.Header.AddressList(key)
		var out []string
		for _, a := range addrs {
			out = append(out, a.Address)
		}
		return out
	}
	msg := &graphMIME{data: data, to: list("To"), cc: list("Cc"), bcc: list("Bcc")}
	if f := list("From"); len(f) > 0 {
		msg.from = f[0]
	}
	return msg, nil
}

func (g *Graph) checkFrom(mailbox, from string) *graphErr {
	if from == "" || strings.EqualFold(from, mailbox) {
		return nil
	}
	g.mu.Lock()
	ok := g.sendAs[strings.ToLower(mailbox)+"\x00"+strings.ToLower(from)]
	g.mu.Unlock()
	if ok {
		return nil
	}
	return gerr(http.StatusForbidden, "ErrorSendAsDenied",
		"The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account., Cannot submit message.")
}

func noRecipients() *graphErr {
	return gerr(http.StatusBadRequest, "ErrorInvalidRecipients", "At least one recipient is not valid., A message can't be sent because it contains no recipients.")
}

func (g *Graph) record(s *GraphSent, data []byte) {
	s.MIMESize = len(data)
	s.MIMEDigest = sha256.Sum256(data)
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.digestOnly {
		s.MIME = data
	}
	g.sent = append(g.sent, s)
}

// deliverNow hands s to the deliver hook before Graph answers 202, so
// that the message is in the mailboxes when the client hears of it.
func (g *Graph) deliverNow(s *GraphSent) {
	g.mu.Lock()
	f := g.deliver
	g.mu.Unlock()
	if f != nil {
		f(s)
	}
}

func (g *Graph) sendMail(c *graphCall) (int, any, *graphErr) {
	if e := c.need("Mail.Send"); e != nil {
		return 0, nil, e
	}
	m, e := c.readMIME()
	if e != nil {
		return 0, nil, e
	}
	if len(m.to)+len(m.cc)+len(m.bcc) == 0 {
		return 0, nil, noRecipients()
	}
	if e := g.checkFrom(c.mailbox, m.from); e != nil {
		return 0, nil, e
	}
	sent := &GraphSent{Mailbox: c.mailbox, Via: "sendMail", To: m.to, Cc: m.cc, Bcc: m.bcc, SaveToSentItems: true}
	g.record(sent, m.data)
	g.deliverNow(sent)
	return http.StatusAccepted, nil, nil
}

// Message returns the message as its recipients would get it: the MIME,
// with To and Cc written from the recipient lists, Bcc removed, and the
// attachments added through the API appended as parts. nil when
// DigestOnly kept no bytes.
func (s *GraphSent) Message() []byte {
	if s.MIME == nil {
		return nil
	}
	m, err := mail.ReadMessage(bytes.NewReader(s.MIME))
	if err != nil {
		return s.MIME
	}
	var out bytes.Buffer
	skip := map[string]bool{"To": true, "Cc": true, "Bcc": true}
	if len(s.Attachments) > 0 {
		skip["Content-Type"], skip["Content-Transfer-Encoding"], skip["Mime-Version"] = true, true, true
	}
	for k, vs := range m.Header {
		if skip[k] {
			continue
		}
		for _, v := range vs {
			fmt.Fprintf(&out, "%s: %s\r\n", k, v)
		}
	}
	for _, h := range []struct {
		key   string
		addrs []string
	}{{"To", s.To}, {"Cc", s.Cc}} {
		if len(h.addrs) > 0 {
			fmt.Fprintf(&out, "%s: %s\r\n", h.key, strings.Join(h.addrs, ", "))
		}
	}
	if len(s.Attachments) == 0 {
		out.WriteString("\r\n")
		io.Copy(&out, m.Body)
		return out.Bytes()
	}
	const boundary = "fake365-graph-assembled"
	fmt.Fprintf(&out, "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=%q\r\n\r\n--%s\r\n", boundary, boundary)
	for _, k := range []string{"Content-Type", "Content-Transfer-Encoding"} {
		if v := m.Header.Get(k); v != "" {
			fmt.Fprintf(&out, "%s: %s\r\n", k, v)
		}
	}
	out.WriteString("\r\n")
	io.Copy(&out, m.Body)
	for _, a := range s.Attachments {
		disp := "attachment"
		if a.IsInline {
			disp = "inline"
		}
		fmt.Fprintf(&out, "\r\n--%s\r\nContent-Type: %s\r\nContent-Disposition: %s; filename=%q\r\nContent-Transfer-Encoding: base64\r\n", boundary, a.ContentType, disp, a.Name)
		if a.ContentID != "" {
			fmt.Fprintf(&out, "Content-ID: <%s>\r\n", a.ContentID)
		}
		out.WriteString("\r\n")
		enc := base64.StdEncoding.EncodeToString(a.Data)
		for len(enc) > 76 {
			out.WriteString(enc[:76] + "\r\n")
			enc = enc[76:]
		}
		out.WriteString(enc + "\r\n")
	}
	fmt.Fprintf(&out, "--%s--\r\n", boundary)
	return out.Bytes()
}
