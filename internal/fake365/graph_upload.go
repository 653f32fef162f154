package fake365

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Upload sessions for large attachments: create, PUT ranges, status, cancel.

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
	n, f := g.enterLocked(mailbox)
	g.mu.Unlock()
	defer g.leave(mailbox)
	if n > GraphMailboxConcurrency {
		graphThrottled(w)
		return
	}
	if r.Header.Get("Authorization") != "" {
		graphWriteError(w, http.StatusUnauthorized, "InvalidAuthenticationToken", "The upload URL is pre-authenticated: send no Authorization header.")
		return
	}
	if r.ContentLength > GraphMaxRequest {
		graphTooLarge().write(w)
		return
	}
	start, end, total, err := parseContentRange(r.Header.Get("Content-Range"))
	if err != nil {
		graphWriteError(w, http.StatusBadRequest, "InvalidContentRange", err.Error())
		return
	}
	body, e := graphReadBody(r)
	switch {
	case e != nil:
		e.write(w)
		return
	case total != u.size:
		graphWriteError(w, http.StatusBadRequest, "InvalidContentRange", fmt.Sprintf("the total %d differs from the session's size %d", total, u.size))
		return
	case end-start+1 != len(body):
		graphWriteError(w, http.StatusBadRequest, "InvalidContentRange", fmt.Sprintf("the range holds %d bytes, the body %d", end-start+1, len(body)))
		return
	}
	if f != nil {
		f.write(w)
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
