package spool

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

func TestAcceptRepairsAndQueues(t *testing.T) {
	e := newEnv(t, nil)
	body := "\r\nscan attached\r\n"
	id, err := e.sp.Accept(Intake{Device: "mfp", Account: testMailbox, Mailbox: testMailbox, From: "mfp@printer.local",
		To: []string{"bob@example.com"}, EnvelopeFrom: RepairAccount, HeaderFrom: RepairFix},
		strings.NewReader("From: mfp@printer.local <mfp@printer.local>\r\nSubject: Scan"+body))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(AcceptedText(id), id) {
		t.Errorf("AcceptedText(%s) = %q", id, AcceptedText(id))
	}
	e.sp.Start()
	e.run(e.delivered(1))
	_, _, _, got := e.up.snapshot()
	if got[0].from != testMailbox {
		t.Errorf("MAIL FROM = %q, want the mailbox (envelope_from account)", got[0].from)
	}
	want := "From: <mfp@printer.local>\r\nSubject: Scan" + body
	if string(got[0].body) != want {
		t.Errorf("delivered %q, want %q", got[0].body, want)
	}
	r := e.record(id)
	if r.OrigFrom != "mfp@printer.local" || r.From != testMailbox || r.Device != "mfp" || r.Size != int64(len(want)) {
		t.Errorf("record = %+v", r)
	}
}

func TestReply(t *testing.T) {
	over := &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Max message size exceeded"}
	for _, tc := range []struct {
		err  error
		code int
	}{
		{fmt.Errorf("put: %w: %w", ErrNoSpace, errors.New("no space left on device")), 452},
		{ErrTooBig, 552},
		{ErrClosed, 421},
		{fmt.Errorf("read message: %w", over), 552},
		{errors.New("permission denied"), 451},
	} {
		r := Reply(tc.err)
		if r.Code != tc.code {
			t.Errorf("Reply(%v) = %d, want %d", tc.err, r.Code, tc.code)
		}
		if bytes.Contains([]byte(r.Message), []byte("denied")) {
			t.Errorf("Reply(%v) shows the local cause to the client: %q", tc.err, r.Message)
		}
	}
}
