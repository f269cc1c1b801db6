package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// NewImage creates a sparse file of size bytes in a fresh [TempDir] and
// returns its path. The file is removed when the test ends.
func NewImage(t testing.TB, size int64) string {
	t.Helper()
	path := filepath.Join(TempDir(t), "disk.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatalf("testenv: sparse image of %d bytes: %v", size, err)
	}
	return path
}

// A LoopDevice is a loop device attached to a sparse image file that the
// test owns.
type LoopDevice struct {
	// Image is the backing file.
	Image string
	// Path is the device node, /dev/loopN.
	Path string
	// Size is the device size in bytes.
	Size int64
	// FSType is the filesystem Mkfs made, or "".
	FSType string
	// MountPoint is where the filesystem is mounted, or "".
	MountPoint string
}

// NewLoopDevice attaches a loop device to a new sparse image of size bytes.
// Both are released when the test ends: the filesystem is thawed and
// unmounted if needed, the device detached and the image removed.
func NewLoopDevice(t testing.TB, size int64) *LoopDevice {
	t.Helper()
	Require(t, LoopDevices)
	img := NewImage(t, size)
	return AttachLoop(t, img)
}

// AttachLoop attaches a loop device to an existing image file the test owns.
func AttachLoop(t testing.TB, image string) *LoopDevice {
	t.Helper()
	Require(t, LoopDevices)
	out, err := exec.Command("losetup", "--find", "--show", image).CombinedOutput()
	if err != nil {
		t.Fatalf("testenv: losetup --find --show %s: %v: %s", image, err, out)
	}
	st, err := os.Stat(image)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	d := &LoopDevice{Image: image, Path: strings.TrimSpace(string(out)), Size: st.Size()}
	track(t, d.release)
	return d
}

// release detaches the device. Mount registers the unmount separately, so
// that it runs before the mount point's directory is removed.
func (d *LoopDevice) release() {
	if out, err := exec.Command("losetup", "--detach", d.Path).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "testenv: losetup --detach %s: %v: %s\n", d.Path, err, out)
	}
}

// Mkfs formats the device with the real mkfs tool for fstype, passing args
// before the device path. See [MkfsImage].
func (d *LoopDevice) Mkfs(t testing.TB, fstype string, args ...string) {
	t.Helper()
	MkfsImage(t, d.Path, fstype, args...)
	d.FSType = fstype
}

// Mount mounts the device's filesystem on a fresh directory and returns it.
// options are passed to mount -o. The filesystem is unmounted when the test
// ends, or earlier by [LoopDevice.Unmount].
func (d *LoopDevice) Mount(t testing.TB, options ...string) string {
	t.Helper()
	Require(t, Mountable(d.FSType))
	mp := TempDir(t)
	args := []string{}
	if d.FSType != "" {
		args = append(args, "-t", d.FSType)
	}
	if len(options) > 0 {
		args = append(args, "-o", strings.Join(options, ","))
	}
	args = append(args, d.Path, mp)
	if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
		t.Fatalf("testenv: mount %s: %v: %s", strings.Join(args, " "), err, out)
	}
	d.MountPoint = mp
	track(t, func() {
		if d.MountPoint != mp {
			return // unmounted by the test
		}
		// A test that failed inside a freeze must not leave the
		// filesystem frozen: umount would hang on it.
		_ = exec.Command("fsfreeze", "--unfreeze", mp).Run()
		if out, err := exec.Command("umount", mp).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: umount %s: %v: %s; detaching lazily\n", mp, err, out)
			_ = exec.Command("umount", "--lazy", mp).Run()
		}
		d.MountPoint = ""
	})
	return mp
}

// Unmount syncs and unmounts the filesystem.
func (d *LoopDevice) Unmount(t testing.TB) {
	t.Helper()
	if d.MountPoint == "" {
		return
	}
	if out, err := exec.Command("umount", d.MountPoint).CombinedOutput(); err != nil {
		t.Fatalf("testenv: umount %s: %v: %s", d.MountPoint, err, out)
	}
	d.MountPoint = ""
	// umount only detaches our mount: a mount namespace created meanwhile
	// (unshare -m, by another package's test) holds a copy of it, and the
	// filesystem stays active, journal and all, until that namespace ends.
	// A block device opens exclusively only when no filesystem uses it.
	if err := waitExclusive(d.Path, time.Minute); err != nil {
		t.Fatalf("testenv: %s still in use after umount: %v", d.Path, err)
	}
}

// MkfsImage formats path, a device or a regular image file, with the real
// mkfs tool for fstype (ext2, ext3, ext4, xfs, reiserfs, btrfs or vfat),
// quietly and without asking. args go before the path, so they can set the
// block size, features and so on. Making a filesystem in a regular file
// needs no root.
func MkfsImage(t testing.TB, path, fstype string, args ...string) {
	t.Helper()
	Require(t, Mkfs(fstype))
	cmd := mkfsCommand(fstype)
	var full []string
	switch fstype {
	case "ext2", "ext3", "ext4":
		full = []string{"-F", "-q"}
	case "xfs", "btrfs":
		full = []string{"-f", "-q"}
	case "reiserfs":
		full = []string{"-f", "-f", "-q"}
	}
	full = append(append(full, args...), path)
	c := exec.Command(cmd, full...)
	// mkfs.xfs refuses filesystems under 300 MiB unless it believes it is
	// run by the xfstests suite; small test filesystems are what we want.
	c.Env = append(os.Environ(), "TEST_DIR=1", "TEST_DEV=1", "QA_CHECK_FS=1")
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("testenv: %s %s: %v: %s", cmd, strings.Join(full, " "), err, out)
	}
}

func mkfsCommand(fstype string) string {
	switch fstype {
	case "reiserfs":
		return "mkreiserfs"
	default:
		return "mkfs." + fstype
	}
}

// NewFilesystem is the common case: a loop device of size bytes, formatted
// as fstype with mkfsArgs and mounted. It returns the device; its
// MountPoint is the mounted directory.
func NewFilesystem(t testing.TB, fstype string, size int64, mkfsArgs ...string) *LoopDevice {
	t.Helper()
	Require(t, LoopDevices, Mkfs(fstype), Mountable(fstype))
	d := NewLoopDevice(t, size)
	d.Mkfs(t, fstype, mkfsArgs...)
	d.Mount(t)
	return d
}
