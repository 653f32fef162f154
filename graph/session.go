package graph

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mailproxy/submit"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-smtp"
)

// Session is an SMTP session's way to Graph, with the shape of every
// Submitter: Mail, Rcpt, Data, Reset, Quit. Its errors are
// *smtp.SMTPError with a text safe for the client. It is not safe for
// concurrent use.
type Session struct {
	s      *Sender
	ctx    context.Context
	cancel context.CancelFunc
	from   string
	rcpt   []string // envelope recipients, deduplicated case-insensitively
	seen   map[string]bool
}

// NewSession starts a session whose requests run under ctx: the SMTP
// session's or the spool worker's lifetime, not a deadline for opening it.
// Close (or Quit) cancels what is in flight.
func (s *Sender) NewSession(ctx context.Context) *Session {
	ctx, cancel := context.WithCancel(ctx)
	return &Session{s: s, ctx: ctx, cancel: cancel}
}

// Mail starts a message. Graph sends as the mailbox (the MIME From must be
// the mailbox or one it may send as); the envelope sender is not sent.
func (t *Session) Mail(from string, _ *smtp.MailOptions) error {
	t.Reset()
	t.from = from
	return nil
}

// Rcpt adds an envelope recipient. The message goes to exactly these.
func (t *Session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if _, err := mail.ParseAddress("<" + to + ">"); err != nil || to == "" {
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad recipient address syntax"}
	}
	key := strings.ToLower(to)
	if t.seen[key] {
		return nil
	}
	if len(t.rcpt) >= maxRecipients {
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: fmt.Sprintf("Too many recipients (Graph takes %d per message)", maxRecipients)}
	}
	if t.seen == nil {
		t.seen = map[string]bool{}
	}
	t.seen[key] = true
	t.rcpt = append(t.rcpt, to)
	return nil
}

// Reset forgets the transaction.
func (t *Session) Reset() error {
	t.from, t.rcpt, t.seen = "", nil, nil
	return nil
}

// Quit ends the session; nothing is held open between messages.
func (t *Session) Quit() error {
	t.Reset()
	return t.Close()
}

// Close ends the session at once, from any goroutine: a message in flight
// is not sent (its draft is deleted), and Data answers 451.
func (t *Session) Close() error {
	if t.cancel != nil {
		t.cancel()
	}
	return nil
}

// AcceptedText is the reply text of a message Graph accepted.
const AcceptedText = "2.0.0 OK: accepted by Microsoft Graph"

// Data reads the message from r to its end and sends it. A nil error
// means Graph accepted it (202); reply is then the text for the client's
// 250.
func (t *Session) Data(r io.Reader) (reply string, err error) {
	defer t.Reset()
	if len(t.rcpt) == 0 {
		io.Copy(io.Discard, r)
		return "", &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "No valid recipients"}
	}
	ctx := t.ctx
	if ctx == nil { // a zero Session
		ctx = context.Background()
	}
	if err := t.s.reply(t.s.Send(ctx, t.rcpt, r)); err != nil {
		return "", err
	}
	return AcceptedText, nil
}

// Send sends the message read from r to exactly the envelope recipients rcpt.
func (s *Sender) Send(ctx context.Context, rcpt []string, r io.Reader) error {
	sp, err := spoolMessage(s.opts.TempDir, r, s.opts.MaxMessageBytes)
	if err != nil {
		return err
	}
	defer sp.Close()
	hi, err := readHeaderInfo(sp.reader())
	if err != nil {
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "The message has no valid header"}
	}
	th := &throttle{}
	small := b64Len(sp.size) <= maxRequestBody
	if small && s.opts.KeepSentItems && sameRecipients(rcpt, hi) {
		return s.sendMIME(ctx, th, sp)
	}
	if small {
		return s.sendDraft(ctx, th, sp, rcpt, hi, nil)
	}
	leaves, err := scan(sp.reader())
	if err != nil {
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "The message's MIME structure cannot be read: " + clean(err.Error())}
	}
	if !choose(leaves, sp.size) {
		return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
			Message: "Message too large for Graph: its text without attachments exceeds Graph's 4 MB request limit"}
	}
	defer func() {
		for _, l := range leaves {
			if l.file != nil {
				removeTemp(l.file)
			}
		}
	}()
	stripped, err := os.CreateTemp(s.opts.TempDir, "mailproxy-graph-draft-*.eml")
	if err != nil {
		return fmt.Errorf("spool the draft: %w", err)
	}
	defer removeTemp(stripped)
	if err := rewrite(sp.reader(), leaves, stripped, s.opts.TempDir); err != nil {
		return fmt.Errorf("take the attachments out: %w", err)
	}
	size, err := stripped.Seek(0, io.SeekCurrent)
	if err != nil {
		return err
	}
	if b64Len(size) > maxRequestBody {
		return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
			Message: "Message too large for Graph: its text without attachments exceeds Graph's 4 MB request limit"}
	}
	var removed []*leaf
	for _, l := range leaves {
		if l.remove {
			removed = append(removed, l)
		}
	}
	return s.sendDraft(ctx, th, &spoolFile{f: stripped, size: size}, rcpt, hi, removed)
}

// sameRecipients reports whether the envelope names exactly the header's
// To, Cc and Bcc addresses (case-insensitively): then Graph's MIME send,
// which takes its recipients from those headers, sends to the envelope.
func sameRecipients(rcpt []string, hi headerInfo) bool {
	hdr := map[string]bool{}
	for _, list := range [][]*mail.Address{hi.to, hi.cc, hi.bcc} {
		for _, a := range list {
			hdr[strings.ToLower(a.Address)] = true
		}
	}
	if len(hdr) != len(rcpt) {
		return false
	}
	for _, r := range rcpt {
		if !hdr[strings.ToLower(r)] {
			return false
		}
	}
	return true
}

func (s *Sender) userURL() string {
	return s.opts.BaseURL + "/v1.0/users/" + url.PathEscape(s.mailbox)
}

func mimeBody(sp *spoolFile) body {
	return body{open: func() io.Reader { return newB64Reader(sp.reader()) }, size: b64Len(sp.size), ctype: "text/plain"}
}

func (s *Sender) sendMIME(ctx context.Context, th *throttle, sp *spoolFile) error {
	_, err := s.do(ctx, th, call{op: "sendMail", method: http.MethodPost, url: s.userURL() + "/sendMail", body: mimeBody(sp), auth: true}, nil)
	if err == nil {
		s.log.Info("message sent", "path", "sendMail", "bytes", sp.size)
	}
	return err
}

type recipient struct {
	EmailAddress struct {
		Address string `json:"address"`
		Name    string `json:"name,omitempty"`
	} `json:"emailAddress"`
}

// split sorts the envelope into Graph's three lists: a recipient in the
// header's To stays in To, one in Cc stays in Cc, every other one (Bcc
// header or none) goes to Bcc, so nobody sees an address the sender did not
// show. Header recipients the envelope does not name are dropped.
func split(rcpt []string, hi headerInfo) (to, cc, bcc []recipient) {
	find := func(list []*mail.Address, addr string) (*mail.Address, bool) {
		for _, a := range list {
			if strings.EqualFold(a.Address, addr) {
				return a, true
			}
		}
		return nil, false
	}
	mk := func(addr, name string) recipient {
		var r recipient
		r.EmailAddress.Address, r.EmailAddress.Name = addr, name
		return r
	}
	to, cc, bcc = []recipient{}, []recipient{}, []recipient{}
	for _, addr := range rcpt {
		if a, ok := find(hi.to, addr); ok {
			to = append(to, mk(addr, a.Name))
		} else if a, ok := find(hi.cc, addr); ok {
			cc = append(cc, mk(addr, a.Name))
		} else {
			bcc = append(bcc, mk(addr, ""))
		}
	}
	return to, cc, bcc
}

// sendDraft creates a draft from sp's MIME, sets its recipients to the
// envelope, adds the removed attachments and sends it. A draft that could
// not be sent is deleted.
func (s *Sender) sendDraft(ctx context.Context, th *throttle, sp *spoolFile, rcpt []string, hi headerInfo, removed []*leaf) (err error) {
	var draft struct {
		ID string `json:"id"`
	}
	if _, err := s.do(ctx, th, call{op: "create draft", method: http.MethodPost, url: s.userURL() + "/messages", body: mimeBody(sp), auth: true}, &draft); err != nil {
		return err
	}
	if draft.ID == "" {
		return errors.New("graph create draft: the answer has no id")
	}
	msgURL := s.userURL() + "/messages/" + url.PathEscape(draft.ID)
	defer func() {
		if err != nil {
			s.deleteDraft(ctx, msgURL)
		}
	}()

	to, cc, bcc := split(rcpt, hi)
	patch := map[string]any{"toRecipients": to, "ccRecipients": cc, "bccRecipients": bcc}
	if !s.opts.KeepSentItems {
		// PidTagDeleteAfterSubmit: Exchange deletes the message once sent
		// instead of filing it in Sent Items.
		patch["singleValueExtendedProperties"] = []map[string]string{{"id": "Boolean 0x0E01", "value": "true"}}
	}
	pb, err := jsonBody(patch)
	if err != nil {
		return err
	}
	if _, err := s.do(ctx, th, call{op: "set recipients", method: http.MethodPatch, url: msgURL, body: pb, auth: true, retryTransport: true}, nil); err != nil {
		return err
	}
	for _, l := range removed {
		if err := s.attach(ctx, th, msgURL, l); err != nil {
			return err
		}
	}
	if _, err := s.do(ctx, th, call{op: "send draft", method: http.MethodPost, url: msgURL + "/send", body: body{open: func() io.Reader { return strings.NewReader("") }, ctype: "application/json"}, auth: true}, nil); err != nil {
		return err
	}
	s.log.Info("message sent", "path", "draft", "bytes", sp.size, "uploaded", len(removed))
	return nil
}

func (s *Sender) deleteDraft(ctx context.Context, msgURL string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if _, err := s.do(ctx, &throttle{}, call{op: "delete draft", method: http.MethodDelete, url: msgURL, auth: true, retryTransport: true}, nil); err != nil {
		s.log.Warn("could not delete a draft that was not sent; it stays in the mailbox's Drafts", "err", err)
	}
}

// attach adds a removed attachment: one POST when it is small enough,
// else an upload session.
func (s *Sender) attach(ctx context.Context, th *throttle, msgURL string, l *leaf) error {
	size, err := l.file.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	if size <= postAttachmentMax {
		return s.postAttachment(ctx, th, msgURL, l, size)
	}
	return s.upload(ctx, th, msgURL, l, size)
}

func (s *Sender) postAttachment(ctx context.Context, th *throttle, msgURL string, l *leaf, size int64) error {
	meta := map[string]any{
		"@odata.type": "#microsoft.graph.fileAttachment",
		"name":        l.name(),
		"contentType": l.contentType(),
		"isInline":    l.inline(),
	}
	if id := l.contentID(); id != "" {
		meta["contentId"] = id
	}
	mb, err := json.Marshal(meta)
	if err != nil {
		return err
	}
	prefix := string(mb[:len(mb)-1]) + `,"contentBytes":"`
	const suffix = `"}`
	b := body{
		open: func() io.Reader {
			return io.MultiReader(strings.NewReader(prefix), newB64Reader(io.NewSectionReader(l.file, 0, size)), strings.NewReader(suffix))
		},
		size:  int64(len(prefix)) + b64Len(size) + int64(len(suffix)),
		ctype: "application/json",
	}
	_, err = s.do(ctx, th, call{op: "add attachment", method: http.MethodPost, url: msgURL + "/attachments", body: b, auth: true}, nil)
	return err
}

// A Session is a submit.Submitter, the shape the spool and the SMTP front
// submit through.
var (
	_ submit.Submitter = (*Session)(nil)
	_ io.Closer        = (*Session)(nil)
)
