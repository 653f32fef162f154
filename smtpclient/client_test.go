package smtpclient

import (
	"bufio"
	"errors"
	"mailproxy/submit"
	"reflect"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

func TestReadReply(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    reply
		wantErr string
	}{
		{in: "250 OK\r\n", want: reply{250, []string{"OK"}}},
		{in: "250\r\n", want: reply{250, []string{""}}},
		{in: "220 bare LF\n", want: reply{220, []string{"bare LF"}}},
		{in: "250-host\r\n250-PIPELINING\r\n250 SIZE 100\r\n", want: reply{250, []string{"host", "PIPELINING", "SIZE 100"}}},
		{in: "250-a\r\n251 b\r\n", wantErr: "malformed reply line"},
		{in: "25O OK\r\n", wantErr: "malformed reply line"},
		{in: "650 OK\r\n", wantErr: "malformed reply line"},
		{in: "250x\r\n", wantErr: "malformed reply line"},
		{in: "250-cut", wantErr: "unexpected EOF"},
		{in: "250 " + strings.Repeat("x", readBufferSize) + "\r\n", wantErr: "reply line too long"},
		{in: strings.Repeat("250-x\r\n", maxReplyLines) + "250 x\r\n", wantErr: "reply of more than"},
	} {
		u := &Client{r: bufio.NewReaderSize(strings.NewReader(tc.in), readBufferSize)}
		got, err := u.readReply()
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("readReply(%q) = %v, %v, want error %q", submit.Truncate(tc.in, 40), got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("readReply(%q) = %v, %v, want %v, nil", tc.in, got, err, tc.want)
		}
	}
}

func TestReplyErr(t *testing.T) {
	for _, tc := range []struct {
		rep  reply
		want *smtp.SMTPError
	}{
		{reply{550, []string{"5.1.1 User unknown"}}, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"}},
		{reply{452, []string{"4.5.3 Too many", "4.5.3 recipients"}}, &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "Too many\nrecipients"}},
		{reply{554, []string{"Transaction failed"}}, &smtp.SMTPError{Code: 554, Message: "Transaction failed"}},
		{reply{421, []string{""}}, &smtp.SMTPError{Code: 421}},
	} {
		var se *smtp.SMTPError
		if err := tc.rep.err(); !errors.As(err, &se) || !reflect.DeepEqual(se, tc.want) {
			t.Errorf("%v.err() = %#v, want %#v", tc.rep, err, tc.want)
		}
	}
	// Anything but a 4xx or 5xx where another reply was due is a broken
	// conversation, not a reply for the client.
	for _, code := range []int{220, 250, 334, 354} {
		var se *smtp.SMTPError
		if err := (reply{code, []string{"x"}}).err(); err == nil || errors.As(err, &se) {
			t.Errorf("reply %d .err() = %v, want a protocol error", code, err)
		}
	}
}

func TestXtext(t *testing.T) {
	for in, want := range map[string]string{
		"alice@contoso.com": "alice@contoso.com",
		"a+b=c d":           "a+2Bb+3Dc+20d",
		"jörg":              "j+C3+B6rg",
		"\x01":              "+01",
	} {
		if got := xtext(in); got != want {
			t.Errorf("xtext(%q) = %q, want %q", in, got, want)
		}
	}
	for _, tc := range []struct {
		in      string
		unitext bool
		want    string
	}{
		{"bob@example.com", false, "bob@example.com"},
		{"jörg@example.com", false, `j\x{F6}rg@example.com`},
		{"jörg@example.com", true, "jörg@example.com"},
		{"a b+c=d\\e", true, `a\x{20}b\x{2B}c\x{3D}d\x{5C}e`},
	} {
		if got := utf8AddrText(tc.in, tc.unitext); got != tc.want {
			t.Errorf("utf8AddrText(%q, %v) = %q, want %q", tc.in, tc.unitext, got, tc.want)
		}
	}
}
