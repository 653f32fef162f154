package fake365

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"net/mail"
	"strings"
)

// Drafts: create from MIME, patch recipients and properties, delete, send,
// small attachments.

type graphDraft struct {
	id, mailbox string
	from        string // the MIME's From address
	mime        []byte
	size        int
	digest      [32]byte
	to, cc, bcc []string
	deleteAfter bool
	attachments []GraphAttachment
}

type graphRecipient struct {
	EmailAddress struct {
		Address string `json:"address"`
		Name    string `json:"name,omitempty"`
	} `json:"emailAddress"`
}

func recipients(addrs []string) []graphRecipient {
	out := make([]graphRecipient, len(addrs))
	for i, a := range addrs {
		out[i].EmailAddress.Address = a
	}
	return out
}

type graphMessageJSON struct {
	ID            string           `json:"id"`
	IsDraft       bool             `json:"isDraft"`
	ToRecipients  []graphRecipient `json:"toRecipients"`
	CcRecipients  []graphRecipient `json:"ccRecipients"`
	BccRecipients []graphRecipient `json:"bccRecipients"`
}

func (d *graphDraft) json() graphMessageJSON {
	return graphMessageJSON{ID: d.id, IsDraft: true, ToRecipients: recipients(d.to), CcRecipients: recipients(d.cc), BccRecipients: recipients(d.bcc)}
}

func (g *Graph) createDraft(c *graphCall) (int, any, *graphErr) {
	if e := c.need("Mail.ReadWrite"); e != nil {
		return 0, nil, e
	}
	m, e := c.readMIME()
	if e != nil {
		return 0, nil, e
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.nextID++
	d := &graphDraft{id: fmt.Sprintf("AAMkAD%08d=", g.nextID), mailbox: c.mailbox, from: m.from, to: m.to, cc: m.cc, bcc: m.bcc,
		size: len(m.data), digest: sha256.Sum256(m.data)}
	if !g.digestOnly {
		d.mime = m.data
	}
	g.drafts[d.id] = d
	return http.StatusCreated, d.json(), nil
}

func (g *Graph) draft(c *graphCall) (*graphDraft, *graphErr) {
	g.mu.Lock()
	defer g.mu.Unlock()
	d := g.drafts[c.r.PathValue("id")]
	if d == nil || d.mailbox != c.mailbox {
		return nil, gerr(http.StatusNotFound, "ErrorItemNotFound", "The specified object was not found in the store.")
	}
	return d, nil
}

func (g *Graph) patchDraft(c *graphCall) (int, any, *graphErr) {
	if e := c.need("Mail.ReadWrite"); e != nil {
		return 0, nil, e
	}
	d, e := g.draft(c)
	if e != nil {
		return 0, nil, e
	}
	var patch struct {
		To    *[]graphRecipient `json:"toRecipients"`
		Cc    *[]graphRecipient `json:"ccRecipients"`
		Bcc   *[]graphRecipient `json:"bccRecipients"`
		Props []struct {
			ID    string `json:"id"`
			Value string `json:"value"`
		} `json:"singleValueExtendedProperties"`
	}
	dec := json.NewDecoder(bytes.NewReader(c.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&patch); err != nil {
		return 0, nil, gerr(http.StatusBadRequest, "RequestBodyRead", "Invalid JSON: %v", err)
	}
	addrs := func(rs []graphRecipient) ([]string, *graphErr) {
		out := []string{}
		for _, r := range rs {
			if _, err := mail.ParseAddress(r.EmailAddress.Address); err != nil {
				return nil, gerr(http.StatusBadRequest, "ErrorInvalidRecipients", "At least one recipient is not valid.")
			}
			out = append(out, r.EmailAddress.Address)
		}
		return out, nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, x := range []struct {
		in  *[]graphRecipient
		out *[]string
	}{{patch.To, &d.to}, {patch.Cc, &d.cc}, {patch.Bcc, &d.bcc}} {
		if x.in == nil {
			continue
		}
		a, e := addrs(*x.in)
		if e != nil {
			return 0, nil, e
		}
		*x.out = a
	}
	for _, p := range patch.Props {
		if strings.EqualFold(p.ID, "Boolean 0x0E01") { // PidTagDeleteAfterSubmit
			d.deleteAfter = strings.EqualFold(p.Value, "true")
		}
	}
	return http.StatusOK, d.json(), nil
}

func (g *Graph) deleteDraft(c *graphCall) (int, any, *graphErr) {
	if e := c.need("Mail.ReadWrite"); e != nil {
		return 0, nil, e
	}
	d, e := g.draft(c)
	if e != nil {
		return 0, nil, e
	}
	g.mu.Lock()
	delete(g.drafts, d.id)
	g.mu.Unlock()
	return http.StatusNoContent, nil, nil
}

func (g *Graph) sendDraft(c *graphCall) (int, any, *graphErr) {
	if e := c.need("Mail.Send"); e != nil {
		return 0, nil, e
	}
	d, e := g.draft(c)
	if e != nil {
		return 0, nil, e
	}
	if len(c.body) > 0 {
		return 0, nil, gerr(http.StatusBadRequest, "ErrorInvalidRequest", "send takes no body")
	}
	if len(d.to)+len(d.cc)+len(d.bcc) == 0 {
		return 0, nil, noRecipients()
	}
	if e := g.checkFrom(c.mailbox, d.from); e != nil {
		return 0, nil, e
	}
	g.mu.Lock()
	delete(g.drafts, d.id)
	total := d.size
	for _, a := range d.attachments {
		total += a.Size
	}
	g.mu.Unlock()
	if total > GraphMaxMessage {
		return 0, nil, gerr(http.StatusBadRequest, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.")
	}
	s := &GraphSent{Mailbox: c.mailbox, Via: "draft", To: d.to, Cc: d.cc, Bcc: d.bcc, Attachments: d.attachments, SaveToSentItems: !d.deleteAfter,
		MIMESize: d.size, MIMEDigest: d.digest, MIME: d.mime}
	g.mu.Lock()
	g.sent = append(g.sent, s)
	g.mu.Unlock()
	g.deliverNow(s)
	return http.StatusAccepted, nil, nil
}

func (g *Graph) postAttachment(c *graphCall) (int, any, *graphErr) {
	if e := c.need("Mail.ReadWrite"); e != nil {
		return 0, nil, e
	}
	d, e := g.draft(c)
	if e != nil {
		return 0, nil, e
	}
	var a struct {
		Type         string `json:"@odata.type"`
		Name         string `json:"name"`
		ContentType  string `json:"contentType"`
		ContentBytes []byte `json:"contentBytes"`
		IsInline     bool   `json:"isInline"`
		ContentID    string `json:"contentId"`
	}
	if err := json.Unmarshal(c.body, &a); err != nil {
		return 0, nil, gerr(http.StatusBadRequest, "RequestBodyRead", "Invalid JSON: %v", err)
	}
	if a.Type != "#microsoft.graph.fileAttachment" || a.Name == "" {
		return 0, nil, gerr(http.StatusBadRequest, "ErrorInvalidRequest", "a fileAttachment with a name is required")
	}
	att := GraphAttachment{Name: a.Name, ContentType: a.ContentType, ContentID: a.ContentID, IsInline: a.IsInline, Via: "post",
		Size: len(a.ContentBytes), Digest: sha256.Sum256(a.ContentBytes), Chunks: 1}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.digestOnly {
		att.Data = a.ContentBytes
	}
	d.attachments = append(d.attachments, att)
	return http.StatusCreated, map[string]any{"id": fmt.Sprintf("att%d", len(d.attachments)), "name": a.Name, "size": att.Size}, nil
}
