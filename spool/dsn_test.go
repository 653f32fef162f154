package spool

import (
	"bufio"
	"bytes"
	"io"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
)

// checkDSN parses a DSN back with go-message and checks its RFC 3464 parts.
func checkDSN(t *testing.T, raw []byte, rcpt, status, diag, origHeader string) {
	t.Helper()
	ent, err := message.Read(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("DSN does not parse: %v\n%s", err, raw)
	}
	mt, params, _ := ent.Header.ContentType()
	if mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("DSN Content-Type = %s %v, want multipart/report; report-type=delivery-status", mt, params)
	}
	if ent.Header.Get("Auto-Submitted") != "auto-replied" {
		t.Errorf("DSN Auto-Submitted = %q", ent.Header.Get("Auto-Submitted"))
	}
	mr := ent.MultipartReader()
	var types []string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("DSN part: %v", err)
		}
		pt, _, _ := p.Header.ContentType()
		types = append(types, pt)
		body, _ := io.ReadAll(p.Body)
		switch pt {
		case "message/delivery-status":
			tr := textproto.NewReader(bufio.NewReader(bytes.NewReader(body)))
			per, err := tr.ReadMIMEHeader()
			if err != nil || !strings.HasPrefix(per.Get("Reporting-MTA"), "dns; ") {
				t.Errorf("per-message fields = %v, %v", per, err)
			}
			fields, err := tr.ReadMIMEHeader()
			if err != nil && err != io.EOF {
				t.Fatalf("per-recipient fields: %v", err)
			}
			if got := fields.Get("Final-Recipient"); got != "rfc822; "+rcpt {
				t.Errorf("Final-Recipient = %q, want rfc822; %s", got, rcpt)
			}
			if fields.Get("Action") != "failed" || fields.Get("Status") != status {
				t.Errorf("Action/Status = %q/%q, want failed/%s", fields.Get("Action"), fields.Get("Status"), status)
			}
			if got := fields.Get("Diagnostic-Code"); got != "smtp; "+diag {
				t.Errorf("Diagnostic-Code = %q, want smtp; %s", got, diag)
			}
		case "text/rfc822-headers":
			if !strings.Contains(string(body), origHeader) {
				t.Errorf("original headers %q lack %q", body, origHeader)
			}
			if strings.Contains(string(body), "body of") {
				t.Error("the DSN quotes the body; only headers belong there")
			}
		}
	}
	if strings.Join(types, ",") != "text/plain,message/delivery-status,text/rfc822-headers" {
		t.Errorf("DSN parts = %v", types)
	}
}

func TestDSNTarget(t *testing.T) {
	for _, tc := range []struct {
		env  Envelope
		want string
	}{
		{Envelope{From: "a@contoso.com", OrigFrom: "a@contoso.com", Mailbox: "m@contoso.com"}, "a@contoso.com"},
		{Envelope{From: "m@contoso.com", OrigFrom: "printer@local", Mailbox: "m@contoso.com"}, "m@contoso.com"},
		{Envelope{From: "m@contoso.com", OrigFrom: "", Mailbox: "m@contoso.com"}, ""},
		{Envelope{From: "junk", OrigFrom: "junk", Mailbox: "m@contoso.com"}, "m@contoso.com"},
		{Envelope{From: "m@contoso.com", OrigFrom: "m@contoso.com", Mailbox: "m@contoso.com", IsDSN: true}, ""},
	} {
		if got := dsnTarget(&tc.env); got != tc.want {
			t.Errorf("dsnTarget(%+v) = %q, want %q", tc.env, got, tc.want)
		}
	}
}

func TestBuildDSNParses(t *testing.T) {
	env := &Envelope{ID: "20261201T090000-abc", Device: "mfp", Received: time.Now()}
	raw := buildDSN(dsnInfo{domain: "proxy.test", from: "m@contoso.com", to: "a@contoso.com", env: env, now: time.Now(),
		failed: []string{"x@example.com"}, reply: map[string]string{"x@example.com": "550 5.1.1 unknown\nsecond line"},
		status: map[string]string{"x@example.com": "5.1.1"}, header: []byte("Subject: hi\r\nFrom: a@contoso.com\r\n")})
	checkDSN(t, raw, "x@example.com", "5.1.1", "550 5.1.1 unknown second line", "Subject: hi")
}

// A DSN the device's sender cannot receive goes to the mailbox instead.
func TestUndeliverableDSNGoesToMailbox(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Rate = 600 })
	e.up.fail("rcpt:bob@example.com", smtpErr(550, [3]int{5, 1, 1}, "unknown"))
	e.up.fail("rcpt:alice@contoso.com", smtpErr(550, [3]int{5, 1, 1}, "no such sender either"))
	e.opts.Open = e.up.Open
	_, err := e.sp.Enqueue(&Envelope{Account: testMailbox, Mailbox: testMailbox, From: "alice@contoso.com",
		OrigFrom: "alice@contoso.com", To: []string{"bob@example.com"}}, strings.NewReader(testMessage("x")))
	if err != nil {
		t.Fatal(err)
	}
	e.sp.Start()
	e.run(e.delivered(1))
	_, _, _, got := e.up.snapshot()
	if len(got[0].to) != 1 || got[0].to[0] != testMailbox {
		t.Fatalf("delivered to %v, want the redirected DSN to %s", got[0].to, testMailbox)
	}
	checkDSN(t, got[0].body, "bob@example.com", "5.1.1", "550 5.1.1 unknown", "Subject: x")
}
