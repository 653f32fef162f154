package fake365

import (
	"net/http"
	"strconv"
	"time"
)

// Failures a test injects into the fake Graph: throttling, error answers,
// refused tokens, failed or lost upload ranges.

type graphFailure struct {
	status     int
	code, msg  string
	retryAfter time.Duration
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

// write sends the injected answer, with Retry-After in whole seconds
// (rounded up) when it has one.
func (f *graphFailure) write(w http.ResponseWriter) {
	if f.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((f.retryAfter+time.Second-1)/time.Second)))
	}
	graphWriteError(w, f.status, f.code, f.msg)
}
