package spool

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

func TestSessionSpools(t *testing.T) {
	e := newEnv(t, nil)
	c := e.sp.NewSession(Intake{Device: "mfp", Account: testMailbox, Mailbox: testMailbox,
		EnvelopeFrom: RepairAccount, HeaderFrom: RepairFix})
	if _, err := c.Data(strings.NewReader("x")); err == nil {
		t.Error("Data before MAIL succeeded")
	}
	if err := c.Mail("mfp@printer.local", &smtp.MailOptions{Body: smtp.Body8BitMIME}); err != nil {
		t.Fatal(err)
	}
	c.Rcpt("a@example.com", nil)
	c.Rcpt("b@example.com", nil)
	reply, err := c.Data(strings.NewReader("Subject: one\r\n\r\nbody\r\n"))
	if err != nil || !strings.HasPrefix(reply, "2.0.0 Ok: queued as ") {
		t.Fatalf("Data = %q, %v", reply, err)
	}
	id := strings.TrimPrefix(reply, "2.0.0 Ok: queued as ")
	// A second transaction on the same session, after RSET.
	c.Reset()
	c.Mail("", nil)
	c.Rcpt("c@example.com", nil)
	// A sender whose data breaks off: nothing queued, the read error back.
	broken := io.MultiReader(strings.NewReader("Subject: half\r\n"), iotestErrReader{})
	if _, err := c.Data(broken); err == nil || errors.As(err, new(*smtp.SMTPError)) {
		t.Errorf("Data from a broken sender = %v, want the read error", err)
	}
	st := e.sp.Status()
	if len(st) != 1 || st[0].Depth != 1 {
		t.Fatalf("status = %+v, want one queued", st)
	}
	e.sp.Start()
	e.run(e.delivered(1))
	_, _, _, got := e.up.snapshot()
	if got[0].from != testMailbox || len(got[0].to) != 2 || !strings.Contains(string(got[0].body), "From: <scanner@contoso.com>") {
		t.Errorf("delivered %s -> %v: %q", got[0].from, got[0].to, got[0].body)
	}
	if r := e.record(id); r.Device != "mfp" || r.OrigFrom != "mfp@printer.local" {
		t.Errorf("record = %+v", r)
	}
}

func TestSessionFullDisk(t *testing.T) {
	e := newEnv(t, nil)
	e.store.create = func(string) (syncFile, error) {
		return nil, &iotestNoSpace{}
	}
	c := e.sp.NewSession(Intake{Account: testMailbox, Mailbox: testMailbox})
	c.Mail(testMailbox, nil)
	c.Rcpt("a@example.com", nil)
	_, err := c.Data(strings.NewReader("Subject: x\r\n\r\n"))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 452 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 1}) {
		t.Errorf("Data on a full disk = %v, want 452 4.3.1", err)
	}
}

type iotestNoSpace struct{}

func (*iotestNoSpace) Error() string { return "no space left on device" }
func (*iotestNoSpace) Is(target error) bool {
	return target == ErrNoSpace
}
