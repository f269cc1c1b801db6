package blockdev

import (
	"errors"
	"os"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
	"golang.org/x/sys/unix"
)

// TestFreezeThawHelpers checks the ioctl wrappers and their errno on real
// ext4 and XFS: a second freeze is EBUSY, thawing a thawed filesystem is
// EINVAL.
func TestFreezeThawHelpers(t *testing.T) {
	for _, fstype := range []string{"ext4", "xfs"} {
		t.Run(fstype, func(t *testing.T) {
			d := newTestFilesystem(t, fstype)
			dir, err := os.Open(d.MountPoint)
			if err != nil {
				t.Fatal(err)
			}
			defer dir.Close()
			if err := Syncfs(dir); err != nil {
				t.Fatalf("syncfs: %v", err)
			}
			if err := Freeze(dir); err != nil {
				t.Fatalf("freeze: %v", err)
			}
			if err := Freeze(dir); !errors.Is(err, unix.EBUSY) {
				t.Errorf("second freeze: %v, want EBUSY", err)
			}
			dev, err := os.Open(d.Path)
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			if err := FlushBuffers(dev); err != nil {
				t.Errorf("BLKFLSBUF while frozen: %v", err)
			}
			if err := Thaw(dir); err != nil {
				t.Fatalf("thaw: %v", err)
			}
			if err := Thaw(dir); !errors.Is(err, unix.EINVAL) {
				t.Errorf("second thaw: %v, want EINVAL", err)
			}
			if err := FlushBuffers(dir); err == nil {
				t.Error("BLKFLSBUF on a directory succeeded")
			}
		})
	}
}

// newTestFilesystem makes a small loop-mounted filesystem of fstype.
func newTestFilesystem(t *testing.T, fstype string) *testenv.LoopDevice {
	t.Helper()
	testenv.Require(t, testenv.Root, testenv.LoopDevices, testenv.Commands("fsfreeze"), testenv.Mkfs(fstype), testenv.Mountable(fstype))
	size := int64(64 << 20)
	switch fstype {
	case "xfs":
		size = 320 << 20 // mkfs.xfs's smallest log needs this much
	case "btrfs":
		size = 256 << 20 // above mkfs.btrfs's minimum
	}
	return testenv.NewFilesystem(t, fstype, size)
}
