package spool

import (
	"io"
	"strings"
	"testing"
)

const mbx = "scanner@contoso.com"

func TestEnvelopeFrom(t *testing.T) {
	for _, tc := range []struct{ mode, from, want string }{
		{RepairAccount, "mfp@printer.local", mbx},
		{RepairAccount, "Scanner@Contoso.com", "Scanner@Contoso.com"},
		{RepairAccount, "", mbx},
		{RepairKeep, "mfp@printer.local", "mfp@printer.local"},
		{RepairKeep, "", ""},
	} {
		if got := EnvelopeFrom(tc.mode, tc.from, mbx); got != tc.want {
			t.Errorf("EnvelopeFrom(%s, %q) = %q, want %q", tc.mode, tc.from, got, tc.want)
		}
	}
}

func TestRepairHeader(t *testing.T) {
	body := "\r\nline one\r\nFrom: not a header, the body\r\n\r\n.\r\n\x00\xff"
	for _, tc := range []struct {
		name, mode, header, envFrom, want string
	}{
		{"keep leaves malformed", RepairKeep, "From: a@b <a@b>\r\nSubject: s\r\n", mbx,
			"From: a@b <a@b>\r\nSubject: s\r\n"},
		{"fix: printer repeats the address", RepairFix, "From: a@b.com <a@b.com>\r\nSubject: s\r\n", mbx,
			"From: <a@b.com>\r\nSubject: s\r\n"},
		{"fix: name with an @ kept quoted", RepairFix, "From: Floor 2 @ HQ <mfp@corp.com>\r\n", mbx,
			"From: \"Floor 2 @ HQ\" <mfp@corp.com>\r\n"},
		{"fix: bare address with junk", RepairFix, "From: scanner mfp@corp.com;\r\n", mbx,
			"From: \"scanner\" <mfp@corp.com>\r\n"},
		{"fix: missing From added", RepairFix, "Subject: s\r\nTo: bob@example.com\r\n", "dev@corp.com",
			"Subject: s\r\nTo: bob@example.com\r\nFrom: <dev@corp.com>\r\n"},
		{"fix: nothing usable, the envelope sender", RepairFix, "From: SCANNER\r\nSubject: s\r\n", "dev@corp.com",
			"From: <dev@corp.com>\r\nSubject: s\r\n"},
		{"fix: well formed untouched", RepairFix, "From: \"Bob\" <bob@corp.com>\r\nSubject: s\r\n", mbx,
			"From: \"Bob\" <bob@corp.com>\r\nSubject: s\r\n"},
		{"fix: folded From repaired", RepairFix, "From: a@b.com\r\n <a@b.com>\r\nSubject: s\r\n", mbx,
			"From: <a@b.com>\r\nSubject: s\r\n"},
		{"fix: two From fields become one", RepairFix, "From: <a@b.com>\r\nFrom: <c@d.com>\r\n", mbx,
			"From: <a@b.com>\r\n"},
		{"fix: LF-only message keeps LF", RepairFix, "Subject: s\n", "dev@corp.com",
			"Subject: s\nFrom: <dev@corp.com>\n"},
		{"account: display name kept, Reply-To added", RepairAccount, "From: Floor Two <mfp@printer.local>\r\nSubject: s\r\n", mbx,
			"From: \"Floor Two\" <scanner@contoso.com>\r\nReply-To: <mfp@printer.local>\r\nSubject: s\r\n"},
		{"account: existing Reply-To kept", RepairAccount, "Reply-To: desk@corp.com\r\nFrom: mfp@printer.local\r\n", mbx,
			"Reply-To: desk@corp.com\r\nFrom: <scanner@contoso.com>\r\n"},
		{"account: malformed original", RepairAccount, "From: a@b.com <a@b.com>\r\n", mbx,
			"From: <scanner@contoso.com>\r\nReply-To: <a@b.com>\r\n"},
		{"account: no From", RepairAccount, "Subject: s\r\n", mbx,
			"Subject: s\r\nFrom: <scanner@contoso.com>\r\n"},
		{"account: already the mailbox", RepairAccount, "From: Scanner <scanner@contoso.com>\r\n", mbx,
			"From: Scanner <scanner@contoso.com>\r\n"},
		{"account: non-ASCII name encoded", RepairAccount, "From: Büro <mfp@printer.local>\r\n", mbx,
			"From: =?utf-8?q?B=C3=BCro?= <scanner@contoso.com>\r\nReply-To: <mfp@printer.local>\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := body
			if strings.HasSuffix(tc.header, "\n") && !strings.HasSuffix(tc.header, "\r\n") {
				b = strings.ReplaceAll(body, "\r\n", "\n")
			}
			got, err := io.ReadAll(RepairHeader(strings.NewReader(tc.header+b), tc.mode, tc.envFrom, mbx))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want+b {
				t.Errorf("RepairHeader(%s, %q)\n got %q\nwant %q", tc.mode, tc.header, got, tc.want+b)
			}
		})
	}
}

// A message that is all header (no blank line) still gets its From, and a
// huge header is relayed untouched.
func TestRepairHeaderEdges(t *testing.T) {
	got, _ := io.ReadAll(RepairHeader(strings.NewReader("Subject: s"), RepairFix, "d@c.com", mbx))
	if string(got) != "Subject: s\r\nFrom: <d@c.com>\r\n" {
		t.Errorf("headers only: %q", got)
	}
	huge := "From: a@b <a@b>\r\nX: " + strings.Repeat("y", maxRepairHeader) + "\r\n\r\nbody"
	got, _ = io.ReadAll(RepairHeader(strings.NewReader(huge), RepairFix, "d@c.com", mbx))
	if string(got) != huge {
		t.Error("a header over the bound was changed")
	}
}
