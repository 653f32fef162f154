package graph

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Error is an error answer from Graph.
type Error struct {
	Status     int
	Code       string        // Graph's error code: "ErrorSendAsDenied"
	Message    string        // Graph's message, as sent (may be long)
	RetryAfter time.Duration // from Retry-After; 0 if none
	Op         string        // what we were doing: "sendMail", "create draft"...
}

func (e *Error) Error() string {
	return fmt.Sprintf("graph %s: %d %s: %s", e.Op, e.Status, e.Code, e.Message)
}

// TokenError wraps a failure of the token source.
type TokenError struct{ Err error }

func (e *TokenError) Error() string { return "get a Graph token: " + e.Err.Error() }
func (e *TokenError) Unwrap() error { return e.Err }

// body makes a request body; it is called again for each attempt.
type body struct {
	open  func() io.Reader // nil: no body
	size  int64
	ctype string
}

func jsonBody(v any) (body, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return body{}, err
	}
	return body{open: func() io.Reader { return bytes.NewReader(b) }, size: int64(len(b)), ctype: "application/json"}, nil
}

// call is one Graph request with its retries.
type call struct {
	op     string
	method string
	url    string
	body   body
	auth   bool // send the bearer token (not for upload URLs)
	// retryTransport: a transport error may be retried (the request is
	// idempotent or nothing was accepted yet).
	retryTransport bool
	timeout        time.Duration
	hdr            http.Header // extra request headers
}

// throttle tracks the Retry-After waiting of one message.
type throttle struct {
	waited time.Duration
}

// do runs c: it takes a slot of the mailbox for each attempt, refreshes a
// refused token once, and honours Retry-After on 429/503/504 while the
// message's waiting stays within maxThrottleWait and ctx's deadline. On
// success it decodes a JSON answer into out (if not nil) and returns the
// status.
func (s *Sender) do(ctx context.Context, th *throttle, c call, out any) (int, error) {
	if c.timeout == 0 {
		c.timeout = requestTimeout
	}
	refreshed := false
	var token string
	for attempt := 1; ; attempt++ {
		if c.auth && token == "" {
			t, err := s.tokens.Token(ctx)
			if err != nil {
				return 0, &TokenError{Err: err}
			}
			token = t
		}
		status, hdr, respBody, err := s.once(ctx, c, token)
		if err != nil {
			if ctx.Err() != nil || !c.retryTransport || attempt >= maxAttempts {
				return 0, fmt.Errorf("graph %s: %w", c.op, err)
			}
			if err := s.wait(ctx, th, backoff(attempt)); err != nil {
				return 0, fmt.Errorf("graph %s: %w", c.op, errors.Join(errTransport, err))
			}
			continue
		}
		if status >= 200 && status < 300 {
			if out != nil && len(respBody) > 0 {
				if err := json.Unmarshal(respBody, out); err != nil {
					return status, fmt.Errorf("graph %s: decode the answer: %w", c.op, err)
				}
			}
			return status, nil
		}
		gerr := parseError(c.op, status, hdr, respBody)
		switch {
		case status == http.StatusUnauthorized && c.auth && !refreshed:
			refreshed = true
			t, err := s.tokens.Refresh(ctx, token)
			if err != nil {
				return 0, &TokenError{Err: err}
			}
			token = t
			attempt-- // the refresh is not a throttling attempt
			continue
		case retryable(status) && attempt < maxAttempts:
			d := gerr.RetryAfter
			if d <= 0 {
				d = backoff(attempt)
			}
			if err := s.wait(ctx, th, d); err != nil {
				return 0, gerr // the wait does not fit: the client retries later
			}
			continue
		}
		return 0, gerr
	}
}

var errTransport = errors.New("graph unreachable")

func retryable(status int) bool {
	return status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout
}

func backoff(attempt int) time.Duration {
	return min(defaultRetryAfter<<(attempt-1), time.Minute)
}

// wait sleeps d if the message's throttle budget and ctx allow it.
func (s *Sender) wait(ctx context.Context, th *throttle, d time.Duration) error {
	if th.waited+d > maxThrottleWait {
		return errors.New("retry-after exceeds the wait budget")
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d+time.Second {
		return errors.New("retry-after exceeds the deadline")
	}
	th.waited += d
	s.log.Info("graph asks to wait", "wait", d)
	return s.opts.Sleep(ctx, d)
}

// once sends one attempt under a slot of the mailbox.
func (s *Sender) once(ctx context.Context, c call, token string) (int, http.Header, []byte, error) {
	release, err := s.opts.Limits.acquire(ctx, s.mailbox)
	if err != nil {
		return 0, nil, nil, err
	}
	defer release()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var rd io.Reader
	if c.body.open != nil {
		rd = c.body.open()
	}
	req, err := http.NewRequestWithContext(ctx, c.method, c.url, rd)
	if err != nil {
		return 0, nil, nil, err
	}
	if c.body.open != nil {
		req.ContentLength = c.body.size
		req.Header.Set("Content-Type", c.body.ctype)
		if req.ContentLength == 0 {
			req.Body = http.NoBody
		}
	}
	for k, v := range c.hdr {
		req.Header[k] = v
	}
	if c.auth {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.opts.HTTPClient.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, nil, nil, err
	}
	return resp.StatusCode, resp.Header, b, nil
}

func parseError(op string, status int, hdr http.Header, b []byte) *Error {
	e := &Error{Status: status, Op: op}
	var eb struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &eb) == nil && eb.Error.Code != "" {
		e.Code, e.Message = eb.Error.Code, eb.Error.Message
	} else {
		e.Code = http.StatusText(status)
		e.Message = strings.TrimSpace(string(b))
	}
	if ra := hdr.Get("Retry-After"); ra != "" {
		if secs, err := strconv.Atoi(strings.TrimSpace(ra)); err == nil && secs >= 0 {
			e.RetryAfter = time.Duration(secs) * time.Second
		} else if t, err := http.ParseTime(ra); err == nil {
			e.RetryAfter = max(time.Until(t), 0)
		}
	}
	return e
}
