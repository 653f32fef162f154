package daemon

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"mailproxy/config"
)

// A block that starts is written where `mailproxy status` reads it, and a
// cleared one disappears from there.
func TestBlocksSavedForStatus(t *testing.T) {
	dir := t.TempDir()
	cfg := &config.Config{StateDir: dir}
	cfg.Security.LockoutFailures, cfg.Security.LockoutWindow, cfg.Security.LockoutDuration = 2, time.Hour, time.Hour
	d := &Daemon{cfg: cfg, logger: slog.New(slog.DiscardHandler)}
	d.lockout = d.newLockout(cfg)
	d.lockout.Sleep = func(context.Context, time.Duration) error { return nil }
	addr := netip.MustParseAddr("192.0.2.7")
	for range 2 {
		d.lockout.Begin(context.Background(), "printer@x", addr)
	}
	blocks, err := ReadBlocks(dir, time.Now())
	if err != nil || len(blocks) != 1 || blocks[0].User != "printer@x" || blocks[0].Addr != "192.0.2.7" {
		t.Fatalf("ReadBlocks() = %+v, %v; want the printer's block", blocks, err)
	}
	if got := d.adminBlocks(); len(got) != 1 {
		t.Errorf("adminBlocks() = %+v, want one", got)
	}
	if !d.adminClearBlock("printer@x", "192.0.2.7") {
		t.Fatalf("adminClearBlock() = false")
	}
	if blocks, err := ReadBlocks(dir, time.Now()); err != nil || len(blocks) != 0 {
		t.Errorf("ReadBlocks() after clear = %+v, %v; want none", blocks, err)
	}
	if blocks, err := ReadBlocks(dir, time.Now().Add(2*time.Hour)); err != nil || len(blocks) != 0 {
		t.Errorf("ReadBlocks(later) = %+v, %v; want none", blocks, err)
	}
}
