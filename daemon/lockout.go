package daemon

import (
	"encoding/json"
	"os"
	"path/filepath"
	"time"

	"mailproxy/admin"
	"mailproxy/auth"
	"mailproxy/config"
)

// BlocksFile is where serve keeps the active login blocks, in state_dir,
// for `mailproxy status` (another process) to show.
const BlocksFile = "lockout.json"

func (d *Daemon) newLockout(cfg *config.Config) *auth.Lockout {
	s := cfg.Security
	lo := auth.NewLockout(s.LockoutFailures, s.LockoutWindow, s.LockoutDuration, s.LockoutAddrFailures)
	if lo != nil {
		lo.OnChange = d.saveBlocks
	}
	return lo
}

func (d *Daemon) currentLockout() *auth.Lockout {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lockout
}

// saveBlocks writes the active blocks to state_dir/lockout.json (atomic,
// 0600). Blocks start and end rarely, so writing on each change is cheap.
func (d *Daemon) saveBlocks() {
	d.blocksMu.Lock()
	defer d.blocksMu.Unlock()
	blocks := d.currentLockout().Blocks()
	if blocks == nil {
		blocks = []auth.Block{}
	}
	data, err := json.MarshalIndent(blocks, "", "  ")
	if err != nil {
		return
	}
	d.mu.Lock()
	dir := d.cfg.StateDir
	d.mu.Unlock()
	if err := writeFileAtomic(filepath.Join(dir, BlocksFile), append(data, '\n'), 0o600); err != nil {
		d.logger.Warn("could not save the login blocks for `mailproxy status`", "err", err)
	}
}

// ReadBlocks returns the blocks that serve last saved in stateDir and that
// have not ended yet.
func ReadBlocks(stateDir string, now time.Time) ([]auth.Block, error) {
	data, err := os.ReadFile(filepath.Join(stateDir, BlocksFile))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var all, out []auth.Block
	if err := json.Unmarshal(data, &all); err != nil {
		return nil, err
	}
	for _, b := range all {
		if b.Until.After(now) {
			out = append(out, b)
		}
	}
	return out, nil
}

// adminBlocks and adminClearBlock serve the admin page's list of blocks.
func (d *Daemon) adminBlocks() []admin.LoginBlock {
	var out []admin.LoginBlock
	for _, b := range d.currentLockout().Blocks() {
		out = append(out, admin.LoginBlock{User: b.User, Addr: b.Addr, Until: b.Until})
	}
	return out
}

func (d *Daemon) adminClearBlock(user, addr string) bool {
	return d.currentLockout().Clear(user, addr)
}
