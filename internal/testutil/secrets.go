package testutil

import (
	"context"
	"fmt"
	"sync"
)

// Secrets collects every secret a test run hands out (passwords, tokens,
// client secrets), for a check that none of them reached a log, a reply or
// a file (fake365.Capture's Leaks).
type Secrets struct {
	mu sync.Mutex // protects m
	m  map[string]string
}

// NewSecrets returns an empty collection.
func NewSecrets() *Secrets { return &Secrets{m: map[string]string{}} }

// Add records v, named by kind; an empty or already known v is skipped.
func (s *Secrets) Add(kind, v string) {
	if v == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, old := range s.m {
		if old == v {
			return
		}
	}
	s.m[fmt.Sprintf("%s #%d", kind, len(s.m))] = v
}

// All returns a copy of what was recorded, by name.
func (s *Secrets) All() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]string, len(s.m))
	for k, v := range s.m {
		m[k] = v
	}
	return m
}

// TokenSource is the shape of auth.TokenSource, restated so that testutil
// imports nothing of ours.
type TokenSource interface {
	Token(ctx context.Context) (string, error)
	Refresh(ctx context.Context, rejected string) (string, error)
}

// RecordingTokens hands out Src's tokens and records each in Secrets,
// with the refresh token behind it when RefreshToken is set.
type RecordingTokens struct {
	Src          TokenSource
	Secrets      *Secrets
	RefreshToken func() string
}

func (r RecordingTokens) record(tok string) {
	r.Secrets.Add("access token", tok)
	if r.RefreshToken != nil {
		r.Secrets.Add("refresh token", r.RefreshToken())
	}
}

// Token implements auth.TokenSource.
func (r RecordingTokens) Token(ctx context.Context) (string, error) {
	tok, err := r.Src.Token(ctx)
	r.record(tok)
	return tok, err
}

// Refresh implements auth.TokenSource.
func (r RecordingTokens) Refresh(ctx context.Context, rejected string) (string, error) {
	tok, err := r.Src.Refresh(ctx, rejected)
	r.record(tok)
	return tok, err
}
