package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"mailproxy/internal/cmdline"
)

// Every "run mailproxy login USER" names the config file when it is not
// the platform's default: the IMAP [ALERT], the SMTP reply, status and the
// admin page's hint (oauth.Manager.Status) all come from cmdline.Login.
func TestHintsNameTheConfigFile(t *testing.T) {
	dm := startTestDemo(t)
	cmdline.Set(cmdline.Invocation{Config: dm.cfgFile, DefaultConfig: "/etc/mailproxy/mailproxy.toml"})
	t.Cleanup(func() { cmdline.Set(cmdline.Invocation{}) })
	want := "mailproxy login -config " + dm.cfgFile + " " + demoPending

	c, err := imapclient.DialInsecure(dm.d.Addr("imap").String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(demoPending, "anything").Wait(); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("IMAP LOGIN(%s) = %v, want a refusal containing %q", demoPending, err, want)
	}

	sc, err := smtp.Dial(dm.d.Addr("smtp").String())
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	err = sc.Auth(sasl.NewPlainClient("", demoPending, "anything"))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || !strings.Contains(se.Message, want) {
		t.Errorf("SMTP AUTH(%s) = %v, want a reply containing %q", demoPending, err, want)
	}

	if st := dm.d.Manager().Status(demoPending); !strings.Contains(st.Hint, want) {
		t.Errorf("Status(%s).Hint = %q, want it to contain %q (the admin page shows it)", demoPending, st.Hint, want)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, out, _ := runDocCommand(ctx, []string{"status", "-config", dm.cfgFile}, "")
	if !strings.Contains(out, want) {
		t.Errorf("status output = %q, want it to contain %q", out, want)
	}
}
