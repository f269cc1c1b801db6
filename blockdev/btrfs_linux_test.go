package blockdev

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
	"golang.org/x/sys/unix"
)

// newBtrfsSubvolume makes a loop-mounted btrfs (top level mounted at
// d.MountPoint) with a subvolume "@" mounted by itself at sub, as
// distributions install it.
func newBtrfsSubvolume(t *testing.T) (d *testenv.LoopDevice, sub string) {
	t.Helper()
	testenv.Require(t, testenv.Commands("btrfs"))
	d = newTestFilesystem(t, "btrfs")
	if out, err := exec.Command("btrfs", "subvolume", "create", filepath.Join(d.MountPoint, "@")).CombinedOutput(); err != nil {
		t.Fatalf("btrfs subvolume create: %v: %s", err, out)
	}
	sub = testenv.TempDir(t)
	if out, err := exec.Command("mount", "-t", "btrfs", "-o", "subvol=@", d.Path, sub).CombinedOutput(); err != nil {
		t.Fatalf("mount subvol=@: %v: %s", err, out)
	}
	t.Cleanup(func() {
		exec.Command("fsfreeze", "--unfreeze", sub).Run()
		if out, err := exec.Command("umount", sub).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v: %s", sub, err, out)
		}
	})
	return d, sub
}

// TestBtrfsSubvolumes: btrfs shows an anonymous device number in
// mountinfo (0:N), and stat gives each subvolume yet another one, so
// matching the device's major:minor finds no mount at all. MountsOf,
// DeviceOf and the Sequencer must still find, resolve and freeze it.
func TestBtrfsSubvolumes(t *testing.T) {
	d, sub := newBtrfsSubvolume(t)
	var dev, st unix.Stat_t
	if err := unix.Stat(d.Path, &dev); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(sub, &st); err != nil {
		t.Fatal(err)
	}
	rdev := dev.Rdev
	t.Logf("device %d:%d, subvolume st_dev %d:%d", unix.Major(rdev), unix.Minor(rdev), unix.Major(st.Dev), unix.Minor(st.Dev))

	mounts, err := MountsOf(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	var points []string
	for _, m := range mounts {
		if m.FSType != "btrfs" || m.Source != d.Path {
			t.Errorf("mount %+v", m)
		}
		points = append(points, m.MountPoint)
		if m.Major == unix.Major(rdev) && m.Minor == unix.Minor(rdev) {
			t.Logf("this kernel shows the device's own number for btrfs: %+v", m)
		}
	}
	if want := []string{d.MountPoint, sub}; !slices.Equal(points, want) {
		t.Fatalf("MountsOf = %q, want %q", points, want)
	}

	if err := os.WriteFile(filepath.Join(sub, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(sub, "f"), d.MountPoint, filepath.Join(d.MountPoint, "@")} {
		got, m, err := DeviceOf(p)
		if err != nil || got != d.Path || m.FSType != "btrfs" {
			t.Errorf("DeviceOf(%s) = %q, %+v, %v; want %s", p, got, m, err, d.Path)
		}
	}
	if _, m, _ := DeviceOf(filepath.Join(sub, "f")); m.MountPoint != sub {
		t.Errorf("DeviceOf(subvolume file) is under %q, want %q", m.MountPoint, sub)
	}

	var w *writer
	rep, err := (&Sequencer{Device: d.Path}).Run(context.Background(), func(ctx context.Context) error {
		if !frozen(t, sub) || !frozen(t, d.MountPoint) {
			t.Error("not frozen in the critical section")
		}
		w = startWriter(t, sub, "during")
		if err := readAll(ctx, d.Path); err != nil {
			return err
		}
		if w.completed() {
			t.Error("a writer completed while the filesystem was frozen")
		}
		return nil
	})
	if err != nil || !rep.Frozen || rep.FSType != "btrfs" || rep.MountPoint != d.MountPoint {
		t.Fatalf("Run = %v, %+v", err, rep)
	}
	w.wait(t)
}
