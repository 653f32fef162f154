package main

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestDemoPOP3Banner runs the POP3 commands the banner prints, as a user
// would paste them: the list has the seeded messages, RETR 1 is the first.
func TestDemoPOP3Banner(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skipf("curl not installed: %v", err)
	}
	dm := startTestDemo(t)
	var b bytes.Buffer
	printDemoBanner(&b, dm)
	banner := b.String()
	if !strings.Contains(banner, "POP3     "+dm.d.Addr("pop3").String()) {
		t.Fatalf("banner lacks the POP3 address:\n%s", banner)
	}
	var cmds []string
	for _, l := range strings.Split(banner, "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "curl -s pop3://") {
			cmds = append(cmds, l)
		}
	}
	if len(cmds) != 2 {
		t.Fatalf("banner has %d POP3 curl commands, want 2:\n%s", len(cmds), banner)
	}
	run := func(cmd string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "sh", "-c", cmd).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
		return string(out)
	}
	if list := run(cmds[0]); strings.Count(list, "\n") != demoSeedPerUser {
		t.Errorf("%s = %q, want %d messages listed", cmds[0], list, demoSeedPerUser)
	}
	if got, want := run(cmds[1]), string(demoMessages(demoUser)[0]); got != want {
		t.Errorf("%s = %q, want the first seeded message %q", cmds[1], got, want)
	}
}
