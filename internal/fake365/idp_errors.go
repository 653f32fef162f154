package fake365

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
)

// Entra-shaped error answers, and the failures a test injects into the
// token endpoint.

// Failure makes the token endpoint answer every request with an error.
type Failure struct {
	Status      int    // HTTP status; 0 means 400
	Code        string // OAuth error; "" means "temporarily_unavailable"
	Description string // should start with "AADSTSnnnn: "; "" means a generic AADSTS50000
	// Hang makes requests block, without an answer, until the client gives
	// up (its request context ends) or the IdP is closed.
	Hang bool
}

// SetFailure makes the token endpoint answer every request with f; nil
// restores normal service.
func (p *IdP) SetFailure(f *Failure) {
	if f != nil {
		c := *f
		f = &c
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failure = f
}

// idpError is an OAuth error answer.
type idpError struct {
	status int
	code   string // OAuth error
	aadsts int
	msg    string // after "AADSTSnnnn: "
}

func idpErr(status int, code string, aadsts int, format string, args ...any) *idpError {
	return &idpError{status: status, code: code, aadsts: aadsts, msg: fmt.Sprintf(format, args...)}
}

func idpMissing(param string) *idpError {
	return idpErr(http.StatusBadRequest, "invalid_request", 900144,
		"The request body must contain the following parameter: '%s'.", param)
}

func idpExpiredGrant() *idpError {
	return idpErr(http.StatusBadRequest, "invalid_grant", 70008,
		"The provided authorization code or refresh token has expired due to inactivity. "+
			"Send a new interactive authorization request for this user and resource.")
}

func idpOtherClientGrant() *idpError {
	return idpErr(http.StatusBadRequest, "invalid_grant", 70000, "Provided grant is invalid or malformed.")
}

func idpMalformed() *idpError {
	return idpErr(http.StatusBadRequest, "invalid_request", 9002313, "Invalid request. Request is malformed or invalid.")
}

// flowControl reports whether the error only tells a device flow client to
// keep polling.
func (e *idpError) flowControl() bool {
	return e.code == "authorization_pending" || e.code == "slow_down"
}

var idpAADSTS = regexp.MustCompile(`^AADSTS(\d+)`)

// writeError sends an Entra-shaped error body: the description ends with
// the trace lines Entra appends, and error_codes repeats the AADSTS number.
func (p *IdP) writeError(w http.ResponseWriter, r *http.Request, e *idpError) {
	desc := e.msg
	if e.aadsts != 0 {
		desc = fmt.Sprintf("AADSTS%d: %s", e.aadsts, e.msg)
	}
	p.mu.Lock()
	now := p.now().UTC()
	p.mu.Unlock()
	trace := idpUUID()
	corr := r.Header.Get("client-request-id")
	if len(corr) != 36 {
		corr = idpUUID()
	}
	ts := now.Format("2006-01-02 15:04:05Z")
	body := struct {
		Error         string `json:"error"`
		Description   string `json:"error_description"`
		Codes         []int  `json:"error_codes,omitempty"`
		Timestamp     string `json:"timestamp"`
		TraceID       string `json:"trace_id"`
		CorrelationID string `json:"correlation_id"`
		URI           string `json:"error_uri,omitempty"`
	}{
		Error:         e.code,
		Description:   fmt.Sprintf("%s\r\nTrace ID: %s\r\nCorrelation ID: %s\r\nTimestamp: %s", desc, trace, corr, ts),
		Timestamp:     ts,
		TraceID:       trace,
		CorrelationID: corr,
	}
	code := e.aadsts
	if code == 0 {
		if m := idpAADSTS.FindStringSubmatch(desc); m != nil {
			code, _ = strconv.Atoi(m[1])
		}
	}
	if code != 0 {
		body.Codes = []int{code}
		body.URI = fmt.Sprintf("https://login.microsoftonline.com/error?code=%d", code)
	}
	if e.status == http.StatusUnauthorized && r.Header.Get("Authorization") != "" {
		w.Header().Set("WWW-Authenticate", `Basic realm="fake365"`)
	}
	idpWriteJSON(w, e.status, body)
}

func idpWriteJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store, no-cache")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(status)
	w.Write(body)
}
