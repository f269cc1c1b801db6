package blockdev

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
)

func TestMountsOfLoopAndBindMounts(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.LoopDevices, testenv.Mkfs("ext4"), testenv.Mountable("ext4"))
	d := testenv.NewFilesystem(t, "ext4", 64<<20)
	if err := os.MkdirAll(filepath.Join(d.MountPoint, "sub dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	bind := filepath.Join(testenv.TempDir(t), "bind target") // a space: escaped in mountinfo
	if err := os.Mkdir(bind, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "--bind", filepath.Join(d.MountPoint, "sub dir"), bind).CombinedOutput(); err != nil {
		t.Fatalf("mount --bind: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", bind).Run() })

	mounts, err := MountsOf(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) != 2 {
		t.Fatalf("MountsOf(%s) = %+v, want the mount and the bind mount", d.Path, mounts)
	}
	if m := mounts[0]; m.MountPoint != d.MountPoint || m.Root != "/" || m.FSType != "ext4" || m.Source != d.Path {
		t.Errorf("first mount %+v", m)
	}
	if m := mounts[1]; m.MountPoint != bind || m.Root != "/sub dir" {
		t.Errorf("bind mount %+v", m)
	}

	// DeviceOf resolves a path on either mount to the device and to the
	// mount it is under.
	dev, m, err := DeviceOf(filepath.Join(bind, "."))
	if err != nil || dev != d.Path || m.MountPoint != bind {
		t.Errorf("DeviceOf(bind) = %q, %+v, %v", dev, m, err)
	}
	dev, m, err = DeviceOf(filepath.Join(d.MountPoint, "sub dir"))
	if err != nil || dev != d.Path || m.MountPoint != d.MountPoint {
		t.Errorf("DeviceOf(sub dir) = %q, %+v, %v", dev, m, err)
	}

	// A symlink to the device is the device.
	link := filepath.Join(testenv.TempDir(t), "link")
	if err := os.Symlink(d.Path, link); err != nil {
		t.Fatal(err)
	}
	if ms, err := MountsOf(link); err != nil || len(ms) != 2 {
		t.Errorf("MountsOf(symlink) = %d mounts, %v", len(ms), err)
	}

	// The image file behind the loop device leads to the same mounts,
	// also through a hard link.
	if devs, err := LoopDevicesOf(d.Image); err != nil || len(devs) != 1 || devs[0] != d.Path {
		t.Errorf("LoopDevicesOf(image) = %q, %v", devs, err)
	}
	hard := d.Image + ".link"
	if err := os.Link(d.Image, hard); err != nil {
		t.Fatal(err)
	}
	if ms, err := MountsOf(hard); err != nil || len(ms) != 2 || ms[0].Source != d.Path {
		t.Errorf("MountsOf(image) = %+v, %v", ms, err)
	}
	other := filepath.Join(testenv.TempDir(t), "other.img")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if devs, err := LoopDevicesOf(other); err != nil || len(devs) != 0 {
		t.Errorf("LoopDevicesOf(unattached) = %q, %v", devs, err)
	}

	// The bind mount first: testenv's Unmount waits until nothing holds
	// the filesystem any more.
	if out, err := exec.Command("umount", bind).CombinedOutput(); err != nil {
		t.Fatalf("umount %s: %v: %s", bind, err, out)
	}
	d.Unmount(t)
	if ms, err := MountsOf(d.Path); err != nil || len(ms) != 0 {
		t.Errorf("after umount: %+v, %v", ms, err)
	}
}

func TestMountsOfNotABlockDevice(t *testing.T) {
	if _, err := MountsOf("/dev/null"); !errors.Is(err, ErrNotBlockDevice) {
		t.Errorf("MountsOf(/dev/null) = %v, want ErrNotBlockDevice", err)
	}
	if _, err := MountsOf(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing path: %v", err)
	}
	if _, _, err := DeviceOf("/proc/self"); !errors.Is(err, ErrNotBlockDevice) {
		t.Errorf("DeviceOf(/proc/self) = %v, want ErrNotBlockDevice", err)
	}
}
