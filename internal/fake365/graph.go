package fake365

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/mail"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Graph limits, as Microsoft documents them.
const (
	// GraphMaxRequest is the largest request body Graph accepts (4 MB);
	// a larger one gets 413.
	GraphMaxRequest = 4 << 20
	// GraphMaxMessage is the largest message (150 MB).
	GraphMaxMessage = 150 << 20
	// GraphMailboxConcurrency is how many requests for one mailbox may be
	// in flight at once; one more gets 429 (MailboxConcurrency).
	GraphMailboxConcurrency = 4

	graphUploadLifetime = 15 * time.Minute
)

// Graph is a fake Microsoft Graph mail API (v1.0): sendMail with MIME,
// drafts created from MIME, PATCH of a draft's recipients and extended
// properties, small attachments, upload sessions, send. It checks each
// token with its IdP: the audience must be Graph (an Outlook token gets 401
// InvalidAuthenticationToken, as at Graph) and the token must carry the
// permission (Mail.Send for sending, Mail.ReadWrite for drafts and
// attachments; the .Shared variants for another user's mailbox). A MIME
// From that is not the mailbox gets ErrorSendAsDenied unless AllowSendAs
// allowed it.
//
// What was sent is kept (Sent) so tests compare it with what the client
// sent. Knobs inject 429 with Retry-After, other failures and refused
// tokens. The zero Graph is not usable; call NewGraph.
type Graph struct {
	URL string // "http://127.0.0.1:PORT"; the API is under URL + "/v1.0"

	idp    *IdP
	srv    *http.Server
	served chan struct{}
	once   sync.Once

	mu          sync.Mutex // protects every field below
	drafts      map[string]*graphDraft
	uploads     map[string]*graphUpload // by the upload URL's token
	sent        []*GraphSent
	sendAs      map[string]bool // "mailbox\x00from" allowed
	fail        []graphFailure  // injected answers, consumed in order
	refuse      int             // refuse this many more tokens with 401
	inflight    map[string]int  // by mailbox
	maxInflight map[string]int
	requests    int
	digestOnly  bool
	nextID      int
	deliver     func(*GraphSent)
	puts        int          // upload ranges received
	failPut     map[int]int  // by put number: answer this status without storing
	losePut     map[int]bool // by put number: store, then answer 500 (a lost answer)
}

// GraphSent is one message Graph accepted.
type GraphSent struct {
	Mailbox string
	Via     string // "sendMail" or "draft"
	// MIME is the MIME as the client sent it (for a draft: the MIME it
	// was created from, without the attachments uploaded separately).
	// nil when DigestOnly is on.
	MIME []byte
	// MIMESize and MIMEDigest (SHA-256) are always set.
	MIMESize   int
	MIMEDigest [32]byte
	// Recipients as Graph sends to them: from the MIME headers (sendMail,
	// a draft not patched), or as the draft was patched.
	To, Cc, Bcc []string
	// Attachments added to the draft after it was created (POST
	// attachments or upload sessions), in order.
	Attachments     []GraphAttachment
	SaveToSentItems bool
}

// GraphAttachment is an attachment added to a draft through the API.
type GraphAttachment struct {
	Name, ContentType, ContentID string
	IsInline                     bool
	Via                          string // "post" or "upload"
	Data                         []byte // nil when DigestOnly is on
	Size                         int
	Digest                       [32]byte
	Chunks                       int // PUT requests it took (upload)
}

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

type graphUpload struct {
	draft   *graphDraft
	att     GraphAttachment
	size    int
	data    []byte // received so far (the digest is computed at the end)
	hash    hashState
	next    int // next expected byte
	expires time.Time
}

// hashState accumulates a digest without keeping the bytes.
type hashState struct {
	h interface {
		io.Writer
		Sum([]byte) []byte
	}
}

type graphFailure struct {
	status     int
	code, msg  string
	retryAfter time.Duration
}

// NewGraph starts a fake Graph on 127.0.0.1 whose tokens idp issued.
func NewGraph(idp *IdP) (*Graph, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("fake Graph: listen: %w", err)
	}
	g := &Graph{
		URL:         "http://" + ln.Addr().String(),
		idp:         idp,
		served:      make(chan struct{}),
		drafts:      map[string]*graphDraft{},
		uploads:     map[string]*graphUpload{},
		sendAs:      map[string]bool{},
		inflight:    map[string]int{},
		maxInflight: map[string]int{},
		failPut:     map[int]int{},
		losePut:     map[int]bool{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1.0/users/{mailbox}/sendMail", g.api(g.sendMail))
	mux.HandleFunc("POST /v1.0/users/{mailbox}/messages", g.api(g.createDraft))
	mux.HandleFunc("PATCH /v1.0/users/{mailbox}/messages/{id}", g.api(g.patchDraft))
	mux.HandleFunc("DELETE /v1.0/users/{mailbox}/messages/{id}", g.api(g.deleteDraft))
	mux.HandleFunc("POST /v1.0/users/{mailbox}/messages/{id}/send", g.api(g.sendDraft))
	mux.HandleFunc("POST /v1.0/users/{mailbox}/messages/{id}/attachments", g.api(g.postAttachment))
	mux.HandleFunc("POST /v1.0/users/{mailbox}/messages/{id}/attachments/createUploadSession", g.api(g.createUpload))
	mux.HandleFunc("PUT /upload/{token}", g.uploadChunk)
	mux.HandleFunc("GET /upload/{token}", g.uploadStatus)
	mux.HandleFunc("DELETE /upload/{token}", g.uploadCancel)
	g.srv = &http.Server{Handler: mux, ReadHeaderTimeout: idpReadHeaderTimeout, IdleTimeout: idpIdleTimeout}
	go func() {
		defer close(g.served)
		g.srv.Serve(ln)
	}()
	return g, nil
}

// Close stops the server.
func (g *Graph) Close() {
	g.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), idpCloseTimeout)
		defer cancel()
		if err := g.srv.Shutdown(ctx); err != nil {
			g.srv.Close()
		}
		<-g.served
	})
}

// AllowSendAs lets mailbox send with From: from (Send As permission).
func (g *Graph) AllowSendAs(mailbox, from string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.sendAs[strings.ToLower(mailbox)+"\x00"+strings.ToLower(from)] = true
}

// Throttle makes the next n API requests answer 429 with Retry-After.
func (g *Graph) Throttle(n int, retryAfter time.Duration) {
	for range n {
		g.FailNext(http.StatusTooManyRequests, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.", retryAfter)
	}
}

// FailNext makes the next API request (after those already queued) answer
// status with a Graph error body; retryAfter > 0 adds a Retry-After header.
func (g *Graph) FailNext(status int, code, msg string, retryAfter time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.fail = append(g.fail, graphFailure{status: status, code: code, msg: msg, retryAfter: retryAfter})
}

// FailUploadRange makes the k-th upload range from now (1 = the next)
// answer status without being stored.
func (g *Graph) FailUploadRange(k, status int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.failPut[g.puts+k] = status
}

// LoseUploadAnswer makes the k-th upload range from now be stored and then
// answered 500, as when the answer is lost: the client's retry of the same
// range overlaps and gets 416.
func (g *Graph) LoseUploadAnswer(k int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.losePut[g.puts+k] = true
}

// RefuseTokens makes the next n API requests answer 401 whatever the token.
func (g *Graph) RefuseTokens(n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.refuse = n
}

// DigestOnly makes Graph keep sizes and digests instead of the bytes of
// what is sent (for benchmarks: the fake's memory is not the client's).
func (g *Graph) DigestOnly(on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.digestOnly = on
}

// SetDeliver sets a function called with each message Graph accepts,
// before the 202 (the demo drops them into the fake IMAP server's
// mailboxes); nil: none. It must not call back into g.
func (g *Graph) SetDeliver(f func(*GraphSent)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.deliver = f
}

// Sent returns the messages sent so far.
func (g *Graph) Sent() []*GraphSent {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.sent)
}

// Drafts returns how many drafts exist (created and neither sent nor deleted).
func (g *Graph) Drafts() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.drafts)
}

// Requests returns how many API requests arrived (uploads included).
func (g *Graph) Requests() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.requests
}

// MaxInflight returns the most requests for mailbox that were in flight at once.
func (g *Graph) MaxInflight(mailbox string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.maxInflight[strings.ToLower(mailbox)]
}

// GraphError is Graph's error body.
type graphErrorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func graphWriteError(w http.ResponseWriter, status int, code, msg string) {
	var b graphErrorBody
	b.Error.Code, b.Error.Message = code, msg
	idpWriteJSON(w, status, b)
}

type graphErr struct {
	status    int
	code, msg string
}

func (e *graphErr) Error() string { return e.code + ": " + e.msg }

func gerr(status int, code, format string, args ...any) *graphErr {
	return &graphErr{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

// graphCall is one authenticated API request.
type graphCall struct {
	mailbox string
	token   AccessToken
	body    []byte
	r       *http.Request
}

// api wraps a handler: the request size limit, injected failures, the
// token check, the per-mailbox concurrency limit.
func (g *Graph) api(h func(*graphCall) (int, any, *graphErr)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		mailbox := strings.ToLower(r.PathValue("mailbox"))
		g.mu.Lock()
		g.requests++
		g.inflight[mailbox]++
		n := g.inflight[mailbox]
		g.maxInflight[mailbox] = max(g.maxInflight[mailbox], n)
		var f *graphFailure
		if len(g.fail) > 0 {
			f = &g.fail[0]
			g.fail = g.fail[1:]
		}
		refuse := g.refuse > 0
		if refuse {
			g.refuse--
		}
		g.mu.Unlock()
		defer func() {
			g.mu.Lock()
			g.inflight[mailbox]--
			g.mu.Unlock()
		}()

		if n > GraphMailboxConcurrency {
			w.Header().Set("Retry-After", "1")
			graphWriteError(w, http.StatusTooManyRequests, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, GraphMaxRequest+1))
		if err != nil {
			graphWriteError(w, http.StatusBadRequest, "BadRequest", "could not read the request body")
			return
		}
		if len(body) > GraphMaxRequest {
			graphWriteError(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", "The maximum request length supported is 4MB.")
			return
		}
		if f != nil {
			if f.retryAfter > 0 {
				w.Header().Set("Retry-After", strconv.Itoa(int((f.retryAfter+time.Second-1)/time.Second)))
			}
			graphWriteError(w, f.status, f.code, f.msg)
			return
		}
		tok, e := g.authorize(r, refuse)
		if e != nil {
			if e.status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize"`)
			}
			graphWriteError(w, e.status, e.code, e.msg)
			return
		}
		status, v, e := h(&graphCall{mailbox: mailbox, token: tok, body: body, r: r})
		if e != nil {
			graphWriteError(w, e.status, e.code, e.msg)
			return
		}
		if v == nil {
			w.WriteHeader(status)
			return
		}
		idpWriteJSON(w, status, v)
	}
}

func (g *Graph) authorize(r *http.Request, refuse bool) (AccessToken, *graphErr) {
	auth := r.Header.Get("Authorization")
	raw, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok || raw == "" {
		return AccessToken{}, gerr(http.StatusUnauthorized, "InvalidAuthenticationToken", "Access token is empty.")
	}
	tok, found := g.idp.Inspect(raw)
	switch {
	case refuse || !found:
		return AccessToken{}, gerr(http.StatusUnauthorized, "InvalidAuthenticationToken", "IDX14100: JWT is not well formed.")
	case !g.idp.Now().Before(tok.Expiry):
		return AccessToken{}, gerr(http.StatusUnauthorized, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired.")
	case tok.Audience != GraphResource:
		return AccessToken{}, gerr(http.StatusUnauthorized, "InvalidAuthenticationToken", "Invalid audience.")
	}
	return tok, nil
}

// need checks that the token carries perm ("Mail.Send") for mailbox.
func (c *graphCall) need(perm string) *graphErr {
	if c.token.App {
		if slices.Contains(c.token.Roles, perm) {
			return nil
		}
		return gerr(http.StatusForbidden, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
	}
	own := strings.EqualFold(c.token.Subject, c.mailbox)
	if (own && slices.Contains(c.token.Scopes, perm)) || slices.Contains(c.token.Scopes, perm+".Shared") {
		return nil
	}
	return gerr(http.StatusForbidden, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
}

// decodeMIME reads a text/plain base64 MIME body.
func (c *graphCall) decodeMIME() ([]byte, *graphErr) {
	mt, _, _ := mime.ParseMediaType(c.r.Header.Get("Content-Type"))
	if mt != "text/plain" {
		return nil, gerr(http.StatusBadRequest, "ErrorMimeContentInvalid", "MIME content must be sent as text/plain base64, not %q.", mt)
	}
	data, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(c.body)))
	if err != nil {
		return nil, gerr(http.StatusBadRequest, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")
	}
	return data, nil
}

// parseMIME returns the From address and the To, Cc and Bcc addresses of
// a MIME message.
func (g *Graph) parseMIME(data []byte) (from string, to, cc, bcc []string, e *graphErr) {
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		return "", nil, nil, nil, gerr(http.StatusBadRequest, "ErrorMimeContentInvalid", "The MIME content is not valid: %v", err)
	}
	list := func(key string) []string {
		addrs, _ := m.Header.AddressList(key)
		var out []string
		for _, a := range addrs {
			out = append(out, a.Address)
		}
		return out
	}
	if f := list("From"); len(f) > 0 {
		from = f[0]
	}
	return from, list("To"), list("Cc"), list("Bcc"), nil
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
	data, e := c.decodeMIME()
	if e != nil {
		return 0, nil, e
	}
	from, to, cc, bcc, e := g.parseMIME(data)
	if e != nil {
		return 0, nil, e
	}
	if len(to)+len(cc)+len(bcc) == 0 {
		return 0, nil, noRecipients()
	}
	if e := g.checkFrom(c.mailbox, from); e != nil {
		return 0, nil, e
	}
	sent := &GraphSent{Mailbox: c.mailbox, Via: "sendMail", To: to, Cc: cc, Bcc: bcc, SaveToSentItems: true}
	g.record(sent, data)
	g.deliverNow(sent)
	return http.StatusAccepted, nil, nil
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
	data, e := c.decodeMIME()
	if e != nil {
		return 0, nil, e
	}
	from, to, cc, bcc, e := g.parseMIME(data)
	if e != nil {
		return 0, nil, e
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.nextID++
	d := &graphDraft{id: fmt.Sprintf("AAMkAD%08d=", g.nextID), mailbox: c.mailbox, from: from, to: to, cc: cc, bcc: bcc,
		size: len(data), digest: sha256.Sum256(data)}
	if !g.digestOnly {
		d.mime = data
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

func (g *Graph) createUpload(c *graphCall) (int, any, *graphErr) {
	if e := c.need("Mail.ReadWrite"); e != nil {
		return 0, nil, e
	}
	d, e := g.draft(c)
	if e != nil {
		return 0, nil, e
	}
	var req struct {
		Item struct {
			AttachmentType string `json:"attachmentType"`
			Name           string `json:"name"`
			Size           int64  `json:"size"`
			ContentType    string `json:"contentType"`
			IsInline       bool   `json:"isInline"`
			ContentID      string `json:"contentId"`
		} `json:"AttachmentItem"`
	}
	if err := json.Unmarshal(c.body, &req); err != nil {
		return 0, nil, gerr(http.StatusBadRequest, "RequestBodyRead", "Invalid JSON: %v", err)
	}
	it := req.Item
	switch {
	case it.AttachmentType != "file" || it.Name == "":
		return 0, nil, gerr(http.StatusBadRequest, "ErrorInvalidRequest", "AttachmentItem needs attachmentType file and a name")
	case it.Size <= 0:
		return 0, nil, gerr(http.StatusBadRequest, "ErrorInvalidRequest", "AttachmentItem size must be positive")
	case it.Size > GraphMaxMessage:
		return 0, nil, gerr(http.StatusBadRequest, "ErrorAttachmentSizeShouldNotBeGreaterThanMaximumSize", "The attachment is larger than 150 MB.")
	}
	tok := idpRandText(40)
	u := &graphUpload{
		draft: d, size: int(it.Size), expires: time.Now().Add(graphUploadLifetime),
		att:  GraphAttachment{Name: it.Name, ContentType: it.ContentType, ContentID: it.ContentID, IsInline: it.IsInline, Via: "upload", Size: int(it.Size)},
		hash: hashState{sha256.New()},
	}
	g.mu.Lock()
	g.uploads[tok] = u
	keep := !g.digestOnly
	g.mu.Unlock()
	if keep {
		u.data = make([]byte, 0, 64<<10)
	}
	return http.StatusCreated, map[string]any{
		"uploadUrl":          g.URL + "/upload/" + tok,
		"expirationDateTime": u.expires.UTC().Format(time.RFC3339),
		"nextExpectedRanges": []string{"0-"},
	}, nil
}

func (g *Graph) upload(w http.ResponseWriter, r *http.Request) *graphUpload {
	g.mu.Lock()
	g.requests++
	u := g.uploads[r.PathValue("token")]
	g.mu.Unlock()
	if u == nil || time.Now().After(u.expires) {
		graphWriteError(w, http.StatusNotFound, "ItemNotFound", "The upload session was not found or has expired.")
		return nil
	}
	return u
}

func (g *Graph) uploadStatus(w http.ResponseWriter, r *http.Request) {
	u := g.upload(w, r)
	if u == nil {
		return
	}
	g.mu.Lock()
	next := u.next
	g.mu.Unlock()
	idpWriteJSON(w, http.StatusOK, map[string]any{"nextExpectedRanges": []string{strconv.Itoa(next) + "-"}})
}

func (g *Graph) uploadCancel(w http.ResponseWriter, r *http.Request) {
	if g.upload(w, r) == nil {
		return
	}
	g.mu.Lock()
	delete(g.uploads, r.PathValue("token"))
	g.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// uploadChunk takes one range of an upload session. The URL is the
// credential: a request with an Authorization header is refused, as Graph
// documents.
func (g *Graph) uploadChunk(w http.ResponseWriter, r *http.Request) {
	u := g.upload(w, r)
	if u == nil {
		return
	}
	mailbox := u.draft.mailbox
	g.mu.Lock()
	g.inflight[mailbox]++
	n := g.inflight[mailbox]
	g.maxInflight[mailbox] = max(g.maxInflight[mailbox], n)
	var f *graphFailure
	if len(g.fail) > 0 {
		f = &g.fail[0]
		g.fail = g.fail[1:]
	}
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.inflight[mailbox]--
		g.mu.Unlock()
	}()
	if n > GraphMailboxConcurrency {
		w.Header().Set("Retry-After", "1")
		graphWriteError(w, http.StatusTooManyRequests, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
		return
	}
	if r.Header.Get("Authorization") != "" {
		graphWriteError(w, http.StatusUnauthorized, "InvalidAuthenticationToken", "The upload URL is pre-authenticated: send no Authorization header.")
		return
	}
	if r.ContentLength > GraphMaxRequest {
		graphWriteError(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", "The maximum request length supported is 4MB.")
		return
	}
	start, end, total, err := parseContentRange(r.Header.Get("Content-Range"))
	if err != nil {
		graphWriteError(w, http.StatusBadRequest, "InvalidContentRange", err.Error())
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, GraphMaxRequest+1))
	switch {
	case err != nil:
		graphWriteError(w, http.StatusBadRequest, "BadRequest", "could not read the request body")
		return
	case len(body) > GraphMaxRequest:
		graphWriteError(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", "The maximum request length supported is 4MB.")
		return
	case total != u.size:
		graphWriteError(w, http.StatusBadRequest, "InvalidContentRange", fmt.Sprintf("the total %d differs from the session's size %d", total, u.size))
		return
	case end-start+1 != len(body):
		graphWriteError(w, http.StatusBadRequest, "InvalidContentRange", fmt.Sprintf("the range holds %d bytes, the body %d", end-start+1, len(body)))
		return
	}
	if f != nil {
		if f.retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int((f.retryAfter+time.Second-1)/time.Second)))
		}
		graphWriteError(w, f.status, f.code, f.msg)
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.puts++
	if st := g.failPut[g.puts]; st != 0 {
		graphWriteError(w, st, "InternalServerError", "injected failure")
		return
	}
	if start != u.next || end >= u.size {
		graphWriteError(w, http.StatusRequestedRangeNotSatisfiable, "InvalidRange",
			fmt.Sprintf("The uploaded fragment overlaps or is out of range; next expected range: %d-", u.next))
		return
	}
	u.hash.h.Write(body)
	if u.data != nil {
		u.data = append(u.data, body...)
	}
	u.next = end + 1
	u.att.Chunks++
	if g.losePut[g.puts] {
		graphWriteError(w, http.StatusInternalServerError, "InternalServerError", "injected failure after storing the range")
		return
	}
	if u.next < u.size {
		idpWriteJSON(w, http.StatusOK, map[string]any{
			"expirationDateTime": u.expires.UTC().Format(time.RFC3339),
			"nextExpectedRanges": []string{strconv.Itoa(u.next) + "-"},
		})
		return
	}
	copy(u.att.Digest[:], u.hash.h.Sum(nil))
	u.att.Data = u.data
	u.draft.attachments = append(u.draft.attachments, u.att)
	delete(g.uploads, r.PathValue("token"))
	w.Header().Set("Location", g.URL+"/v1.0/users/"+mailbox+"/messages/"+u.draft.id+"/attachments/att")
	w.WriteHeader(http.StatusCreated)
}

// parseContentRange parses "bytes START-END/TOTAL".
func parseContentRange(s string) (start, end, total int, err error) {
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return 0, 0, 0, errors.New("Content-Range must be bytes START-END/TOTAL")
	}
	rng, tot, ok1 := strings.Cut(rest, "/")
	a, b, ok2 := strings.Cut(rng, "-")
	if !ok1 || !ok2 {
		return 0, 0, 0, errors.New("Content-Range must be bytes START-END/TOTAL")
	}
	var errs [3]error
	start, errs[0] = strconv.Atoi(a)
	end, errs[1] = strconv.Atoi(b)
	total, errs[2] = strconv.Atoi(tot)
	if err := errors.Join(errs[:]...); err != nil || start < 0 || end < start || total <= 0 {
		return 0, 0, 0, errors.New("Content-Range must be bytes START-END/TOTAL")
	}
	return start, end, total, nil
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
