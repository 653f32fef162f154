package fake365

import (
	"errors"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func TestSMTPUpstreamFailNextAndRcpt(t *testing.T) {
	e := newSMTPEnv(t, false)
	c := e.login(t, "alice@contoso.com", "alice@contoso.com")
	e.up.FailNext("DATA", SMTPTemporary, SMTPSenderBlocked)
	e.up.FailRcpt("nobody@contoso.com", SMTPRecipientNotFound)

	_, err := sendMessage(t, c, "alice@contoso.com", nil, "bob@fabrikam.com", nil, upTestMessage)
	checkSMTPError(t, "first DATA", err, SMTPTemporary)
	c.Reset()
	_, err = sendMessage(t, c, "alice@contoso.com", nil, "bob@fabrikam.com", nil, upTestMessage)
	checkSMTPError(t, "second DATA", err, SMTPSenderBlocked)
	c.Reset()
	if _, err := sendMessage(t, c, "alice@contoso.com", nil, "bob@fabrikam.com", nil, upTestMessage); err != nil {
		t.Fatalf("third send = %v, want success once the queue of failures is used up", err)
	}
	c.Reset()
	_, err = sendMessage(t, c, "alice@contoso.com", nil, "Nobody@contoso.com", nil, upTestMessage)
	checkSMTPError(t, "RCPT nobody", err, SMTPRecipientNotFound)
	if n := len(e.up.Messages()); n != 1 {
		t.Errorf("Messages() = %d, want 1", n)
	}
}

func TestSMTPUpstreamRate(t *testing.T) {
	e := newSMTPEnv(t, false)
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	e.up.SetRate(2, time.Minute, 30*time.Second, func() time.Time { return now })
	c := e.login(t, "alice@contoso.com", "alice@contoso.com")
	for i := range 2 {
		if _, err := sendMessage(t, c, "alice@contoso.com", nil, "bob@fabrikam.com", nil, upTestMessage); err != nil {
			t.Fatalf("send %d = %v", i, err)
		}
		c.Reset()
	}
	err := c.Mail("alice@contoso.com", nil)
	checkSMTPError(t, "third MAIL within a minute", err, SMTPThrottled(30*time.Second))
	var se *smtp.SMTPError
	if err == nil || !errors.As(err, &se) || se.Code/100 != 4 {
		t.Errorf("throttle reply %v is not a 4xx", err)
	}
	now = now.Add(time.Minute)
	if _, err := sendMessage(t, c, "alice@contoso.com", nil, "bob@fabrikam.com", nil, upTestMessage); err != nil {
		t.Fatalf("send a minute later = %v", err)
	}
}
