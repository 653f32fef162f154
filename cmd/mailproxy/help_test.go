package main

import (
	"context"
	"strings"
	"testing"
)

// Every subcommand answers -h with exit 0, a usage line and at least one
// sentence saying what it does, not only the flag list.
func TestEverySubcommandHasHelp(t *testing.T) {
	for _, c := range commands() {
		code, stdout, stderr := runDocCommand(context.Background(), []string{c.name, "-h"}, "")
		out := stdout + stderr
		if code != exitOK {
			t.Errorf("mailproxy %s -h: exit %d, want 0; output %q", c.name, code, out)
		}
		if !strings.HasPrefix(out, "usage: mailproxy "+c.name) {
			t.Errorf("mailproxy %s -h does not start with \"usage: mailproxy %s\": %q", c.name, c.name, out)
		}
		prose := 0
		for _, l := range strings.Split(out, "\n") {
			if l != "" && !strings.HasPrefix(l, " ") && !strings.HasPrefix(l, "\t") && !strings.HasPrefix(l, "usage:") && strings.HasSuffix(strings.TrimSpace(l), ".") {
				prose++
			}
		}
		if prose == 0 {
			t.Errorf("mailproxy %s -h has no sentence saying what it does: %q", c.name, out)
		}
	}
}

func TestVersionFlag(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"-version"}, {"version"}} {
		code, stdout, stderr := runDocCommand(context.Background(), args, "")
		if code != exitOK || !strings.HasPrefix(stdout, "mailproxy ") || !strings.Contains(stdout, "commit ") {
			t.Errorf("mailproxy %v = exit %d, stdout %q, stderr %q; want exit 0 and the version line", args, code, stdout, stderr)
		}
	}
	if code, _, _ := runDocCommand(context.Background(), []string{"version", "extra"}, ""); code != exitUsage {
		t.Errorf("mailproxy version extra: exit %d, want %d", code, exitUsage)
	}
}
