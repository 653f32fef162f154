package graph

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-smtp"

	"mailproxy/internal/fake365"
)

const (
	testClient  = "11111111-2222-3333-4444-555555555555"
	testUser    = "alice@contoso.com"
	graphScopes = "https://graph.microsoft.com/Mail.Send https://graph.microsoft.com/Mail.ReadWrite offline_access"
)

// testTokens redeems a refresh token at the fake IdP for Graph scopes, as
// oauth's Source does, and counts what it is asked.
type testTokens struct {
	idp    *fake365.IdP
	scopes string

	mu        sync.Mutex // protects the fields below
	rt        string
	cur       string
	refreshes int
	err       error // returned by Token and Refresh when set
}

func (tt *testTokens) redeem(ctx context.Context) (string, error) {
	_, tokenURL, _ := tt.idp.Endpoints("organizations")
	form := url.Values{"grant_type": {"refresh_token"}, "client_id": {testClient}, "refresh_token": {tt.rt}, "scope": {tt.scopes}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, tokenURL, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var tr struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
		Error        string `json:"error_description"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil {
		return "", err
	}
	if tr.AccessToken == "" {
		return "", errors.New(tr.Error)
	}
	tt.rt, tt.cur = tr.RefreshToken, tr.AccessToken
	return tt.cur, nil
}

func (tt *testTokens) Token(ctx context.Context) (string, error) {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	if tt.err != nil {
		return "", tt.err
	}
	if tt.cur != "" {
		return tt.cur, nil
	}
	return tt.redeem(ctx)
}

func (tt *testTokens) Refresh(ctx context.Context, rejected string) (string, error) {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	tt.refreshes++
	if tt.err != nil {
		return "", tt.err
	}
	if tt.cur != rejected {
		return tt.cur, nil
	}
	return tt.redeem(ctx)
}

type env struct {
	idp    *fake365.IdP
	graph  *fake365.Graph
	tokens *testTokens
	sender *Sender
	tmp    string

	mu     sync.Mutex // protects sleeps
	sleeps []time.Duration
}

func newEnv(t *testing.T, opts Options) *env {
	t.Helper()
	idp, err := fake365.NewIdP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idp.Close)
	idp.AddClient(fake365.Client{ID: testClient})
	idp.AddUser(testUser)
	g, err := fake365.NewGraph(idp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	e := &env{idp: idp, graph: g, tmp: t.TempDir()}
	rt := idp.GrantRefreshToken(testClient, testUser, strings.Fields(
		"https://outlook.office.com/SMTP.Send https://graph.microsoft.com/Mail.Send https://graph.microsoft.com/Mail.ReadWrite offline_access"))
	e.tokens = &testTokens{idp: idp, rt: rt, scopes: graphScopes}
	opts.BaseURL = g.URL
	opts.TempDir = e.tmp
	if opts.Sleep == nil {
		opts.Sleep = func(ctx context.Context, d time.Duration) error {
			e.mu.Lock()
			e.sleeps = append(e.sleeps, d)
			e.mu.Unlock()
			return ctx.Err()
		}
	}
	e.sender = NewSender(testUser, e.tokens, opts)
	t.Cleanup(func() {
		left, _ := os.ReadDir(e.tmp)
		if len(left) > 0 {
			t.Errorf("temporary files left behind: %v", left)
		}
	})
	return e
}

// send runs one transaction and returns Data's error.
func (e *env) send(t *testing.T, from string, rcpt []string, msg io.Reader) error {
	t.Helper()
	s := e.sender.NewSession(context.Background())
	if err := s.Mail(from, nil); err != nil {
		t.Fatalf("Mail(%q) = %v", from, err)
	}
	for _, r := range rcpt {
		if err := s.Rcpt(r, nil); err != nil {
			t.Fatalf("Rcpt(%q) = %v", r, err)
		}
	}
	reply, err := s.Data(msg)
	if err == nil && reply != AcceptedText {
		t.Errorf("Data = %q, nil; want %q", reply, AcceptedText)
	}
	return err
}

func wantReply(t *testing.T, err error, code int, enh smtp.EnhancedCode, substr string) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("Data = %v, want an SMTP reply %d", err, code)
	}
	if se.Code != code || se.EnhancedCode != enh || !strings.Contains(se.Message, substr) {
		t.Fatalf("Data = %d %v %q, want %d %v containing %q", se.Code, se.EnhancedCode, se.Message, code, enh, substr)
	}
}

// attachment is one attachment of a test message: its content is
// pseudo-random from seed, so it need not be kept to be checked.
type attachment struct {
	name, ctype string
	size        int
	seed        uint64
	inline      bool
}

func (a attachment) reader() io.Reader {
	return io.LimitReader(rand.NewChaCha8(seedBytes(a.seed)), int64(a.size))
}

func (a attachment) digest() [32]byte {
	h := sha256.New()
	io.Copy(h, a.reader())
	var d [32]byte
	copy(d[:], h.Sum(nil))
	return d
}

func seedBytes(s uint64) [32]byte {
	var b [32]byte
	for i := range 8 {
		b[i] = byte(s >> (8 * i))
	}
	return b
}

type testMsg struct {
	from, subject, body string
	to, cc, bcc         []string
	atts                []attachment
}

// write writes m as MIME (text body, attachments in base64) to w.
func (m testMsg) write(t testing.TB, w io.Writer) {
	t.Helper()
	var h mail.Header
	h.SetAddressList("From", []*mail.Address{{Address: m.from}})
	addrs := func(l []string) []*mail.Address {
		var out []*mail.Address
		for _, a := range l {
			out = append(out, &mail.Address{Name: "N " + a[:1], Address: a})
		}
		return out
	}
	if len(m.to) > 0 {
		h.SetAddressList("To", addrs(m.to))
	}
	if len(m.cc) > 0 {
		h.SetAddressList("Cc", addrs(m.cc))
	}
	if len(m.bcc) > 0 {
		h.SetAddressList("Bcc", addrs(m.bcc))
	}
	h.SetSubject(m.subject)
	h.SetDate(time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC))
	h.SetMessageID("test-" + m.subject + "@contoso.com")
	h.Set("Content-Type", "multipart/mixed")
	mw, err := message.CreateWriter(w, h.Header)
	if err != nil {
		t.Fatal(err)
	}
	var th message.Header
	th.Set("Content-Type", "text/plain; charset=utf-8")
	th.Set("Content-Transfer-Encoding", "quoted-printable")
	tw, err := mw.CreatePart(th)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(tw, m.body)
	tw.Close()
	for _, a := range m.atts {
		var ah message.Header
		ah.Set("Content-Type", a.ctype)
		disp := "attachment"
		if a.inline {
			disp = "inline"
			ah.Set("Content-Id", "<"+a.name+"@cid>")
		}
		ah.SetContentDisposition(disp, map[string]string{"filename": a.name})
		ah.Set("Content-Transfer-Encoding", "base64")
		aw, err := mw.CreatePart(ah)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(aw, a.reader()); err != nil {
			t.Fatal(err)
		}
		aw.Close()
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
}

func (m testMsg) bytes(t testing.TB) []byte {
	var b bytes.Buffer
	m.write(t, &b)
	return b.Bytes()
}

// file writes m to a temporary file and returns it open at its start.
func (m testMsg) file(t testing.TB) *os.File {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "msg-*.eml")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	bw := bufio.NewWriterSize(f, 256<<10)
	m.write(t, bw)
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	return f
}

// received is a sent message as its recipients would see it.
type received struct {
	subject, body string
	atts          map[string][32]byte // name -> digest
	inline        map[string]bool
}

// parseSent reads what Graph sent: the MIME's text and attachments plus
// those added through the API.
func parseSent(t *testing.T, s *fake365.GraphSent) received {
	t.Helper()
	r := received{atts: map[string][32]byte{}, inline: map[string]bool{}}
	mr, err := mail.CreateReader(bytes.NewReader(s.MIME))
	if err != nil && !message.IsUnknownCharset(err) {
		t.Fatalf("parse the sent MIME: %v", err)
	}
	r.subject, _ = mr.Header.Subject()
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("parse the sent MIME: %v", err)
		}
		data, err := io.ReadAll(p.Body)
		if err != nil {
			t.Fatal(err)
		}
		switch h := p.Header.(type) {
		case *mail.InlineHeader:
			if ct, _, _ := h.ContentType(); ct == "text/plain" {
				r.body += string(data)
				continue
			}
			name, _ := (&mail.AttachmentHeader{Header: h.Header}).Filename()
			r.atts[name] = sha256.Sum256(data)
			r.inline[name] = true
		case *mail.AttachmentHeader:
			name, _ := h.Filename()
			disp, _, _ := h.ContentDisposition()
			r.atts[name] = sha256.Sum256(data)
			r.inline[name] = disp == "inline"
		}
	}
	for _, a := range s.Attachments {
		if _, dup := r.atts[a.Name]; dup {
			t.Errorf("attachment %q both in the MIME and added through the API", a.Name)
		}
		r.atts[a.Name] = a.Digest
		r.inline[a.Name] = a.IsInline
	}
	return r
}

// check compares a sent message with what the client sent.
func check(t *testing.T, s *fake365.GraphSent, m testMsg, to, cc, bcc []string) {
	t.Helper()
	r := parseSent(t, s)
	if r.subject != m.subject {
		t.Errorf("subject = %q, want %q", r.subject, m.subject)
	}
	if strings.TrimSpace(r.body) != strings.TrimSpace(m.body) {
		t.Errorf("body = %q, want %q", r.body, m.body)
	}
	if len(r.atts) != len(m.atts) {
		t.Errorf("%d attachments arrived, want %d", len(r.atts), len(m.atts))
	}
	for _, a := range m.atts {
		got, ok := r.atts[a.name]
		if !ok {
			t.Errorf("attachment %q missing", a.name)
			continue
		}
		if got != a.digest() {
			t.Errorf("attachment %q differs from what was sent", a.name)
		}
		if r.inline[a.name] != a.inline {
			t.Errorf("attachment %q inline = %v, want %v", a.name, r.inline[a.name], a.inline)
		}
	}
	same := func(what string, got, want []string) {
		g := slices.Clone(got)
		w := slices.Clone(want)
		for i := range g {
			g[i] = strings.ToLower(g[i])
		}
		for i := range w {
			w[i] = strings.ToLower(w[i])
		}
		slices.Sort(g)
		slices.Sort(w)
		if !slices.Equal(g, w) {
			t.Errorf("%s = %v, want %v", what, got, want)
		}
	}
	same("To", s.To, to)
	same("Cc", s.Cc, cc)
	same("Bcc", s.Bcc, bcc)
}

func onlySent(t *testing.T, g *fake365.Graph) *fake365.GraphSent {
	t.Helper()
	sent := g.Sent()
	if len(sent) != 1 {
		t.Fatalf("Graph sent %d messages, want 1", len(sent))
	}
	return sent[0]
}

func mb(n float64) int { return int(n * (1 << 20)) }

var _ = fmt.Sprint
