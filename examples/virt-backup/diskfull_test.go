package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
)

// TestBackupDiskFull fills the backup filesystem while a running guest is
// stopped for its backup: the guest must come back from its saved memory,
// the failure must be reported, and the partial files removed.
func TestBackupDiskFull(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.LoopDevices, testenv.Libvirtd, testenv.Mkfs("ext4"), testenv.Mountable("ext4"))
	small := testenv.NewFilesystem(t, "ext4", 12<<20)
	g := testenv.DefineGuest(t, testenv.GuestOptions{Disks: []testenv.GuestDisk{{Format: "raw", Size: 32 << 20, Fill: 16 << 20}}})
	g.Start(t)
	for _, leave := range []bool{false, true} {
		dest := filepath.Join(small.MountPoint, "backup")
		args := []string{"backup", "--destination-path", dest, "--domain-names", g.Name, "--json"}
		if leave {
			// A failed backup brings the guest back even when asked to
			// leave it stopped: there is no backup to have stopped it for.
			args = append(args, "--leave-stopped")
		}
		r := runOK(t, exitFailed, args...)
		d := r.domain(t, g.Name)
		if d.OK || !strings.Contains(d.Error, "no space left") {
			t.Fatalf("full destination (leave-stopped %v): %+v", leave, d)
		}
		if s := state(t, g.Name); s != "running" {
			t.Fatalf("guest is %q after a failed backup (leave-stopped %v), want running", s, leave)
		}
		if left := listDir(t, dest); len(left) != 0 {
			t.Fatalf("failed backup left %v", left)
		}
	}
}
