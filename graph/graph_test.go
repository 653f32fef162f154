package graph

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/emersion/go-smtp"

	"mailproxy/internal/fake365"
	"mailproxy/internal/testutil"
)

var defaults = Options{KeepSentItems: true}

func TestSmallMessageGoesAsOneSendMail(t *testing.T) {
	e := newEnv(t, defaults)
	m := testMsg{from: testUser, subject: "small", body: "hello\r\n", to: []string{"bob@fabrikam.com"}, cc: []string{"carol@fabrikam.com"},
		atts: []attachment{{name: "a.pdf", ctype: "application/pdf", size: 20000, seed: 1}}}
	raw := m.bytes(t)
	if err := e.send(t, testUser, []string{"bob@fabrikam.com", "Carol@Fabrikam.com"}, bytes.NewReader(raw)); err != nil {
		t.Fatalf("Data = %v, want nil", err)
	}
	s := onlySent(t, e.graph)
	if s.Via != "sendMail" || !s.SaveToSentItems {
		t.Errorf("sent via %s (save %v), want sendMail (save true)", s.Via, s.SaveToSentItems)
	}
	if !bytes.Equal(s.MIME, raw) {
		t.Errorf("Graph got other MIME bytes than the client sent")
	}
	check(t, s, m, []string{"bob@fabrikam.com"}, []string{"carol@fabrikam.com"}, nil)
}

func TestEnvelopeDecidesRecipients(t *testing.T) {
	e := newEnv(t, defaults)
	// The envelope adds a Bcc-only recipient and leaves out a header one
	// (a client that splits one message per recipient does so).
	m := testMsg{from: testUser, subject: "bcc", body: "b", to: []string{"bob@fabrikam.com", "dave@fabrikam.com"}, cc: []string{"carol@fabrikam.com"}}
	if err := e.send(t, testUser, []string{"bob@fabrikam.com", "carol@fabrikam.com", "hidden@fabrikam.com"}, bytes.NewReader(m.bytes(t))); err != nil {
		t.Fatalf("Data = %v, want nil", err)
	}
	s := onlySent(t, e.graph)
	if s.Via != "draft" {
		t.Errorf("sent via %s, want a draft with the envelope's recipients", s.Via)
	}
	check(t, s, m, []string{"bob@fabrikam.com"}, []string{"carol@fabrikam.com"}, []string{"hidden@fabrikam.com"})
	if n := e.graph.Drafts(); n != 0 {
		t.Errorf("%d drafts left, want 0", n)
	}
}

func TestBccHeaderOnlyRecipient(t *testing.T) {
	e := newEnv(t, defaults)
	m := testMsg{from: testUser, subject: "bcc-only", body: "b", bcc: []string{"x@fabrikam.com"}}
	if err := e.send(t, testUser, []string{"x@fabrikam.com", "y@fabrikam.com"}, bytes.NewReader(m.bytes(t))); err != nil {
		t.Fatalf("Data = %v, want nil", err)
	}
	check(t, onlySent(t, e.graph), m, nil, nil, []string{"x@fabrikam.com", "y@fabrikam.com"})
}

func TestSentItemsOff(t *testing.T) {
	e := newEnv(t, Options{KeepSentItems: false})
	m := testMsg{from: testUser, subject: "nosave", body: "b", to: []string{"bob@fabrikam.com"}}
	if err := e.send(t, testUser, []string{"bob@fabrikam.com"}, bytes.NewReader(m.bytes(t))); err != nil {
		t.Fatalf("Data = %v, want nil", err)
	}
	s := onlySent(t, e.graph)
	if s.SaveToSentItems {
		t.Errorf("SaveToSentItems = true, want false (delete after submit)")
	}
	check(t, s, m, []string{"bob@fabrikam.com"}, nil, nil)
}

// sizedMsg returns a message whose MIME is close to size bytes: one
// attachment fills it.
func sizedMsg(t *testing.T, size int) testMsg {
	m := testMsg{from: testUser, subject: "sized", body: "see attached", to: []string{"bob@fabrikam.com"}}
	base := len(m.bytes(t))
	// base64 with 76-byte lines: 78 bytes carry 57.
	n := (size - base - 200) / 78 * 57
	m.atts = []attachment{{name: "scan.pdf", ctype: "application/pdf", size: n, seed: 7}}
	return m
}

func TestThreeMegabyteBoundary(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int
		via  string
	}{
		{"under", maxRequestBody/4*3 - 4000, "sendMail"},
		{"over", maxRequestBody/4*3 + 4000, "draft"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, defaults)
			m := sizedMsg(t, tc.size)
			raw := m.bytes(t)
			if d := len(raw) - tc.size; d < -1000 || d > 1000 {
				t.Fatalf("test message is %d bytes, want about %d", len(raw), tc.size)
			}
			if err := e.send(t, testUser, m.to, bytes.NewReader(raw)); err != nil {
				t.Fatalf("Data = %v, want nil", err)
			}
			s := onlySent(t, e.graph)
			if s.Via != tc.via {
				t.Errorf("a %d-byte message went via %s, want %s", len(raw), s.Via, tc.via)
			}
			check(t, s, m, m.to, nil, nil)
		})
	}
}

func TestLargeMessages(t *testing.T) {
	// Under the race detector 100 MB take minutes: the "100MB" case keeps
	// its shape (three attachments over the upload limit, each in many
	// ranges) at a quarter of the size. .ci/run runs it at full size
	// without the race detector.
	big := 1.0
	if testutil.Race {
		big = 0.25
	}
	for _, tc := range []struct {
		name string
		atts []attachment
	}{
		{"25MB", []attachment{
			{name: "big.pdf", ctype: "application/pdf", size: mb(12), seed: 11},
			{name: "photo.jpg", ctype: "image/jpeg", size: mb(8), seed: 12, inline: true},
			{name: "small.txt", ctype: "application/octet-stream", size: 100000, seed: 13},
			{name: "mid.bin", ctype: "application/octet-stream", size: mb(2.5), seed: 14},
		}},
		{"100MB", []attachment{
			{name: "a.bin", ctype: "application/octet-stream", size: mb(25 * big), seed: 21},
			{name: "b.bin", ctype: "application/octet-stream", size: mb(25 * big), seed: 22},
			{name: "c.bin", ctype: "application/octet-stream", size: mb(24 * big), seed: 23},
			{name: "d.bin", ctype: "application/zip", size: mb(0.5), seed: 24},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if testing.Short() && tc.name == "100MB" {
				t.Skip("-short")
			}
			e := newEnv(t, defaults)
			m := testMsg{from: testUser, subject: "large " + tc.name, body: "the files", to: []string{"bob@fabrikam.com"}, atts: tc.atts}
			f := m.file(t)
			if err := e.send(t, testUser, m.to, f); err != nil {
				t.Fatalf("Data = %v, want nil", err)
			}
			s := onlySent(t, e.graph)
			if s.Via != "draft" {
				t.Errorf("sent via %s, want draft", s.Via)
			}
			if s.MIMESize > GraphMaxRequestMIME {
				t.Errorf("draft MIME is %d bytes, over what one request carries", s.MIMESize)
			}
			for _, a := range s.Attachments {
				if a.Via == "upload" && a.Chunks < (a.Size+uploadChunk-1)/uploadChunk {
					t.Errorf("%s came in %d ranges, want at least %d", a.Name, a.Chunks, (a.Size+uploadChunk-1)/uploadChunk)
				}
			}
			check(t, s, m, m.to, nil, nil)
		})
	}
}

// GraphMaxRequestMIME is the most MIME one request can carry in base64.
const GraphMaxRequestMIME = maxRequestBody / 4 * 3

func TestTooLarge413(t *testing.T) {
	e := newEnv(t, defaults)
	e.graph.FailNext(http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", "The maximum request length supported is 4MB.", 0)
	m := testMsg{from: testUser, subject: "x", body: "b", to: []string{"bob@fabrikam.com"}}
	err := e.send(t, testUser, m.to, bytes.NewReader(m.bytes(t)))
	wantReply(t, err, 552, smtp.EnhancedCode{5, 3, 4}, "RequestEntityTooLarge")
}

func TestOverLimitIsRefusedAfterReadingIt(t *testing.T) {
	e := newEnv(t, Options{KeepSentItems: true, MaxMessageBytes: 1000})
	m := sizedMsg(t, 5000)
	r := bytes.NewReader(m.bytes(t))
	err := e.send(t, testUser, m.to, r)
	wantReply(t, err, 552, smtp.EnhancedCode{5, 3, 4}, "too large")
	if r.Len() != 0 {
		t.Errorf("%d bytes of DATA left unread", r.Len())
	}
}

func TestThrottledThenAccepted(t *testing.T) {
	e := newEnv(t, defaults)
	e.graph.Throttle(2, 3*time.Second)
	m := testMsg{from: testUser, subject: "x", body: "b", to: []string{"bob@fabrikam.com"}}
	if err := e.send(t, testUser, m.to, bytes.NewReader(m.bytes(t))); err != nil {
		t.Fatalf("Data = %v, want nil", err)
	}
	onlySent(t, e.graph)
	if len(e.sleeps) != 2 || e.sleeps[0] != 3*time.Second || e.sleeps[1] != 3*time.Second {
		t.Errorf("waited %v, want [3s 3s] as Retry-After said", e.sleeps)
	}
}

func TestThrottledTooLong(t *testing.T) {
	e := newEnv(t, defaults)
	e.graph.Throttle(1, 10*time.Minute)
	m := testMsg{from: testUser, subject: "x", body: "b", to: []string{"bob@fabrikam.com"}}
	err := e.send(t, testUser, m.to, bytes.NewReader(m.bytes(t)))
	wantReply(t, err, 451, smtp.EnhancedCode{4, 7, 500}, "retry after 600 s")
	if len(e.sleeps) != 0 {
		t.Errorf("waited %v; a Retry-After past the budget goes back to the client", e.sleeps)
	}
	if n := len(e.graph.Sent()); n != 0 {
		t.Errorf("%d sent, want 0", n)
	}
}

func TestServiceUnavailable(t *testing.T) {
	e := newEnv(t, defaults)
	for range maxAttempts {
		e.graph.FailNext(http.StatusServiceUnavailable, "ServiceUnavailable", "busy", time.Second)
	}
	m := testMsg{from: testUser, subject: "x", body: "b", to: []string{"bob@fabrikam.com"}}
	err := e.send(t, testUser, m.to, bytes.NewReader(m.bytes(t)))
	wantReply(t, err, 451, smtp.EnhancedCode{4, 7, 500}, "ServiceUnavailable")
}

func TestSendAsDenied(t *testing.T) {
	for _, size := range []int{2000, mb(5)} {
		e := newEnv(t, defaults)
		m := sizedMsg(t, size)
		m.from = "ceo@contoso.com"
		err := e.send(t, m.from, m.to, bytes.NewReader(m.bytes(t)))
		wantReply(t, err, 550, smtp.EnhancedCode{5, 7, 60}, "ErrorSendAsDenied")
		if n := e.graph.Drafts(); n != 0 {
			t.Errorf("%d drafts left after a refused send, want 0 (deleted)", n)
		}
		e.graph.AllowSendAs(testUser, "ceo@contoso.com")
		if err := e.send(t, m.from, m.to, bytes.NewReader(m.bytes(t))); err != nil {
			t.Errorf("with Send As: Data = %v, want nil", err)
		}
	}
}

func TestRefusedTokenIsRefreshedOnce(t *testing.T) {
	e := newEnv(t, defaults)
	m := testMsg{from: testUser, subject: "x", body: "b", to: []string{"bob@fabrikam.com"}}
	if err := e.send(t, testUser, m.to, bytes.NewReader(m.bytes(t))); err != nil {
		t.Fatal(err)
	}
	e.idp.ExpireAccessTokens() // Graph no longer knows the token
	if err := e.send(t, testUser, m.to, bytes.NewReader(m.bytes(t))); err != nil {
		t.Fatalf("after the token was revoked: Data = %v, want nil after one refresh", err)
	}
	if e.tokens.refreshes != 1 {
		t.Errorf("%d refreshes, want 1", e.tokens.refreshes)
	}
	e.graph.RefuseTokens(2)
	err := e.send(t, testUser, m.to, bytes.NewReader(m.bytes(t)))
	wantReply(t, err, 535, smtp.EnhancedCode{5, 7, 3}, "mailproxy login "+testUser)
	if e.tokens.refreshes != 2 {
		t.Errorf("%d refreshes, want 2 (one per message)", e.tokens.refreshes)
	}
}

func TestOutlookTokenIsRefused(t *testing.T) {
	e := newEnv(t, defaults)
	e.tokens.scopes = "https://outlook.office.com/SMTP.Send offline_access"
	m := testMsg{from: testUser, subject: "x", body: "b", to: []string{"bob@fabrikam.com"}}
	err := e.send(t, testUser, m.to, bytes.NewReader(m.bytes(t)))
	wantReply(t, err, 535, smtp.EnhancedCode{5, 7, 3}, "InvalidAuthenticationToken")
}

func TestMissingPermission(t *testing.T) {
	e := newEnv(t, defaults)
	e.tokens.scopes = "https://graph.microsoft.com/Mail.Send offline_access"
	// Mail.Send alone sends a small message...
	m := testMsg{from: testUser, subject: "x", body: "b", to: []string{"bob@fabrikam.com"}}
	if err := e.send(t, testUser, m.to, bytes.NewReader(m.bytes(t))); err != nil {
		t.Fatalf("Data = %v, want nil", err)
	}
	// ...but a draft needs Mail.ReadWrite.
	err := e.send(t, testUser, []string{"other@fabrikam.com"}, bytes.NewReader(m.bytes(t)))
	wantReply(t, err, 550, smtp.EnhancedCode{5, 7, 1}, "Mail.ReadWrite")
}

type signInErr struct{}

func (signInErr) Error() string     { return "invalid_grant: AADSTS70008" }
func (signInErr) NeedsSignIn() bool { return true }
func (signInErr) Hint() string      { return "the refresh token expired: run mailproxy login <user>" }

func TestTokenSourceFailures(t *testing.T) {
	e := newEnv(t, defaults)
	m := testMsg{from: testUser, subject: "x", body: "b", to: []string{"bob@fabrikam.com"}}
	e.tokens.err = signInErr{}
	err := e.send(t, testUser, m.to, bytes.NewReader(m.bytes(t)))
	wantReply(t, err, 535, smtp.EnhancedCode{5, 7, 8}, "run mailproxy login "+testUser)
	e.tokens.err = errors.New("dial tcp: connection refused")
	err = e.send(t, testUser, m.to, bytes.NewReader(m.bytes(t)))
	wantReply(t, err, 454, smtp.EnhancedCode{4, 7, 0}, "temporary failure")
}

func TestUploadRangeErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(g *fake365.Graph)
		ok   bool
	}{
		{"lost answer, then 416, then resume", func(g *fake365.Graph) { g.LoseUploadAnswer(2) }, true},
		{"server error on a range", func(g *fake365.Graph) { g.FailUploadRange(1, http.StatusInternalServerError) }, true},
		{"range refused for good", func(g *fake365.Graph) { g.FailUploadRange(1, http.StatusBadRequest) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, defaults)
			m := testMsg{from: testUser, subject: "resume", body: "b", to: []string{"bob@fabrikam.com"},
				atts: []attachment{{name: "big.bin", ctype: "application/octet-stream", size: mb(9), seed: 5}}}
			tc.set(e.graph)
			err := e.send(t, testUser, m.to, bytes.NewReader(m.bytes(t)))
			if !tc.ok {
				wantReply(t, err, 554, smtp.EnhancedCode{5, 6, 0}, "InternalServerError")
				if n := e.graph.Drafts(); n != 0 {
					t.Errorf("%d drafts left, want 0", n)
				}
				return
			}
			if err != nil {
				t.Fatalf("Data = %v, want nil", err)
			}
			check(t, onlySent(t, e.graph), m, m.to, nil, nil)
		})
	}
}

func TestConcurrencyPerMailbox(t *testing.T) {
	e := newEnv(t, defaults)
	small := testMsg{from: testUser, subject: "c", body: "b", to: []string{"bob@fabrikam.com"}}.bytes(t)
	large := testMsg{from: testUser, subject: "L", body: "b", to: []string{"bob@fabrikam.com"},
		atts: []attachment{{name: "l.bin", ctype: "application/octet-stream", size: mb(5), seed: 3}}}.bytes(t)
	var wg sync.WaitGroup
	errs := make(chan error, 12)
	for i := range 12 {
		msg := small
		if i%3 == 0 {
			msg = large
		}
		wg.Go(func() {
			s := e.sender.NewSession(context.Background())
			s.Mail(testUser, nil)
			s.Rcpt("bob@fabrikam.com", nil)
			_, err := s.Data(bytes.NewReader(msg))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Data = %v", err)
		}
	}
	if n := e.graph.MaxInflight(testUser); n > fake365.GraphMailboxConcurrency {
		t.Errorf("%d requests in flight at once, want at most %d", n, fake365.GraphMailboxConcurrency)
	}
	if n := len(e.graph.Sent()); n != 12 {
		t.Errorf("%d sent, want 12", n)
	}
	if len(e.sleeps) != 0 {
		t.Errorf("throttled: %v", e.sleeps)
	}
}

func TestNoRecipients(t *testing.T) {
	e := newEnv(t, defaults)
	s := e.sender.NewSession(context.Background())
	s.Mail(testUser, nil)
	_, err := s.Data(strings.NewReader("Subject: x\r\n\r\nb\r\n"))
	wantReply(t, err, 554, smtp.EnhancedCode{5, 5, 1}, "No valid recipients")
}

type brokenReader struct{ n int }

func (b *brokenReader) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, errors.New("connection reset by peer")
	}
	n := min(len(p), b.n)
	for i := range p[:n] {
		p[i] = 'x'
	}
	b.n -= n
	return n, nil
}

func TestBrokenDataSendsNothing(t *testing.T) {
	e := newEnv(t, defaults)
	err := e.send(t, testUser, []string{"bob@fabrikam.com"}, &brokenReader{n: 100000})
	wantReply(t, err, 451, smtp.EnhancedCode{4, 3, 0}, "nothing was sent")
	if n := e.graph.Requests(); n != 0 {
		t.Errorf("%d requests reached Graph for a message that broke off", n)
	}
	// The front's own reply for its reader passes through.
	tooLong := &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Line too long"}
	err = e.send(t, testUser, []string{"bob@fabrikam.com"}, io.MultiReader(strings.NewReader("Subject: x\r\n"), iotest.ErrReader(tooLong)))
	wantReply(t, err, 500, smtp.EnhancedCode{5, 5, 2}, "Line too long")
}

func TestNoRoomForTheMessage(t *testing.T) {
	e := newEnv(t, Options{KeepSentItems: true})
	e.sender.opts.TempDir = filepath.Join(e.tmp, "missing")
	m := testMsg{from: testUser, subject: "x", body: "b", to: []string{"bob@fabrikam.com"}}
	err := e.send(t, testUser, m.to, bytes.NewReader(m.bytes(t)))
	wantReply(t, err, 452, smtp.EnhancedCode{4, 3, 1}, "nothing was sent")
}

// The fake's assembled message is what recipients would get: one MIME
// with every attachment, To/Cc from the recipient lists, no Bcc.
func TestAssembledMessage(t *testing.T) {
	e := newEnv(t, defaults)
	m := testMsg{from: testUser, subject: "assembled", body: "see files", to: []string{"bob@fabrikam.com", "dave@fabrikam.com"}, bcc: []string{"x@fabrikam.com"},
		atts: []attachment{{name: "big.pdf", ctype: "application/pdf", size: mb(4), seed: 31}, {name: "small.txt", ctype: "text/plain", size: 1000, seed: 32}}}
	if err := e.send(t, testUser, []string{"bob@fabrikam.com", "x@fabrikam.com"}, bytes.NewReader(m.bytes(t))); err != nil {
		t.Fatal(err)
	}
	s := onlySent(t, e.graph)
	msg := s.Message()
	if bytes.Contains(msg, []byte("\nBcc:")) || bytes.Contains(msg, []byte("dave@")) || bytes.Contains(msg, []byte("x@fabrikam.com")) {
		t.Errorf("assembled message shows a Bcc or a recipient the envelope dropped:\n%.600s", msg)
	}
	whole := &fake365.GraphSent{MIME: msg, To: s.To}
	check(t, whole, m, []string{"bob@fabrikam.com"}, nil, nil)
}

func TestCloseStopsAMessageInFlight(t *testing.T) {
	waiting := make(chan struct{})
	e := newEnv(t, Options{KeepSentItems: true, Sleep: func(ctx context.Context, d time.Duration) error {
		close(waiting)
		<-ctx.Done()
		return ctx.Err()
	}})
	// A large message: the draft exists when Graph throttles the upload.
	m := testMsg{from: testUser, subject: "x", body: "b", to: []string{"bob@fabrikam.com"},
		atts: []attachment{{name: "big.bin", ctype: "application/octet-stream", size: mb(5), seed: 2}}}
	e.graph.FailUploadRange(1, http.StatusTooManyRequests)
	s := e.sender.NewSession(context.Background())
	s.Mail(testUser, nil)
	s.Rcpt("bob@fabrikam.com", nil)
	done := make(chan error, 1)
	go func() {
		_, err := s.Data(bytes.NewReader(m.bytes(t)))
		done <- err
	}()
	<-waiting
	s.Close()
	err := <-done
	wantReply(t, err, 451, smtp.EnhancedCode{4, 7, 500}, "")
	if n := len(e.graph.Sent()); n != 0 {
		t.Errorf("%d sent after Close, want 0", n)
	}
	if n := e.graph.Drafts(); n != 0 {
		t.Errorf("%d drafts left after Close, want 0 (deleted)", n)
	}
}
