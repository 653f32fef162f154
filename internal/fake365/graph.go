package fake365

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
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
	server *httpServer

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

// NewGraph starts a fake Graph on 127.0.0.1 whose tokens idp issued.
func NewGraph(idp *IdP) (*Graph, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("fake Graph: listen: %w", err)
	}
	g := &Graph{
		URL:         "http://" + ln.Addr().String(),
		idp:         idp,
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
	g.server = startHTTP(ln, &http.Server{Handler: mux, ReadHeaderTimeout: idpReadHeaderTimeout, IdleTimeout: idpIdleTimeout})
	return g, nil
}

// Close stops the server.
func (g *Graph) Close() { g.server.stop(nil) }

// AllowSendAs lets mailbox send with From: from (Send As permission).
func (g *Graph) AllowSendAs(mailbox, from string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.sendAs[strings.ToLower(mailbox)+"\x00"+strings.ToLower(from)] = true
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

func (e *graphErr) write(w http.ResponseWriter) { graphWriteError(w, e.status, e.code, e.msg) }

// enterLocked counts a request for mailbox as in flight (leave ends it) and
// takes the next injected failure, if any. It returns how many requests for
// mailbox are in flight, this one included.
func (g *Graph) enterLocked(mailbox string) (int, *graphFailure) {
	g.inflight[mailbox]++
	n := g.inflight[mailbox]
	g.maxInflight[mailbox] = max(g.maxInflight[mailbox], n)
	var f *graphFailure
	if len(g.fail) > 0 {
		f = &g.fail[0]
		g.fail = g.fail[1:]
	}
	return n, f
}

func (g *Graph) leave(mailbox string) {
	g.mu.Lock()
	g.inflight[mailbox]--
	g.mu.Unlock()
}

// graphThrottled answers a request over the mailbox's concurrency limit.
func graphThrottled(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "1")
	graphWriteError(w, http.StatusTooManyRequests, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
}

func graphTooLarge() *graphErr {
	return gerr(http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", "The maximum request length supported is 4MB.")
}

// graphReadBody reads a request body of at most GraphMaxRequest bytes.
func graphReadBody(r *http.Request) ([]byte, *graphErr) {
	body, err := io.ReadAll(io.LimitReader(r.Body, GraphMaxRequest+1))
	if err != nil {
		return nil, gerr(http.StatusBadRequest, "BadRequest", "could not read the request body")
	}
	if len(body) > GraphMaxRequest {
		return nil, graphTooLarge()
	}
	return body, nil
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
		n, f := g.enterLocked(mailbox)
		refuse := g.refuse > 0
		if refuse {
			g.refuse--
		}
		g.mu.Unlock()
		defer g.leave(mailbox)

		if n > GraphMailboxConcurrency {
			graphThrottled(w)
			return
		}
		body, e := graphReadBody(r)
		if e != nil {
			e.write(w)
			return
		}
		if f != nil {
			f.write(w)
			return
		}
		tok, e := g.authorize(r, refuse)
		if e != nil {
			if e.status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize"`)
			}
			e.write(w)
			return
		}
		status, v, e := h(&graphCall{mailbox: mailbox, token: tok, body: body, r: r})
		if e != nil {
			e.write(w)
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
