package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestMain(m *testing.M) { Main(m) }

// recorder is a testing.TB that records Skipf and Fatalf instead of
// stopping the goroutine, so Require's decisions can be checked.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Helper()                      {}
func (r *recorder) Skipf(f string, args ...any)  { r.skipped = fmt.Sprintf(f, args...) }
func (r *recorder) Fatalf(f string, args ...any) { r.failed = fmt.Sprintf(f, args...) }

func TestRequireSkipsLocallyAndFailsInCI(t *testing.T) {
	missing := Prereq{Name: "a unicorn", Check: func() error { return errors.New("none in stock") }}
	present := Prereq{Name: "a horse", Check: func() error { return nil }}

	t.Setenv("CI", "")
	r := &recorder{TB: t}
	Require(r, present, missing)
	if r.failed != "" || !strings.Contains(r.skipped, "a unicorn") || !strings.Contains(r.skipped, "none in stock") {
		t.Fatalf("outside CI: skipped=%q failed=%q, want a skip naming the prerequisite and the reason", r.skipped, r.failed)
	}

	t.Setenv("CI", "true")
	r = &recorder{TB: t}
	Require(r, present, missing)
	if r.skipped != "" || !strings.Contains(r.failed, "a unicorn") {
		t.Fatalf("in CI: skipped=%q failed=%q, want a failure naming the prerequisite", r.skipped, r.failed)
	}

	r = &recorder{TB: t}
	Require(r, present)
	if r.skipped != "" || r.failed != "" {
		t.Fatalf("met prerequisite: skipped=%q failed=%q", r.skipped, r.failed)
	}
}

func TestCommandsNamesWhatIsMissing(t *testing.T) {
	err := Commands("sh", "no-such-command-blockimage").Check()
	if err == nil || !strings.Contains(err.Error(), "no-such-command-blockimage") || strings.Contains(err.Error(), "sh,") {
		t.Fatalf("Commands check = %v, want only the missing command named", err)
	}
	if err := Commands("sh").Check(); err != nil {
		t.Fatalf("sh should be on PATH: %v", err)
	}
}

func TestRunDirPID(t *testing.T) {
	for name, want := range map[string]int{"run-123-456": 123, "run-7-x": 7, "run-x-1": 0, "other-1-2": 0, "run-12": 0} {
		pid, ok := runDirPID(name)
		if ok != (want != 0) || pid != want {
			t.Errorf("runDirPID(%q) = %d, %v; want %d", name, pid, ok, want)
		}
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	if got := unescapeMountinfo(`/tmp/a\040b\011c\134d`); got != "/tmp/a b\tc\\d" {
		t.Fatalf("got %q", got)
	}
}

// TestLoopExt4 is the acceptance test of the loop helpers: a real ext4 on a
// real loop device, a file written, read back after a remount, and a tree
// of files whose digests survive the remount.
func TestLoopExt4(t *testing.T) {
	d := NewFilesystem(t, "ext4", 64<<20)
	if !strings.HasPrefix(d.Path, "/dev/loop") {
		t.Fatalf("device %q is not a loop device", d.Path)
	}
	want := []byte("blockimage testenv\n")
	p := filepath.Join(d.MountPoint, "hello")
	if err := os.WriteFile(p, want, 0o644); err != nil {
		t.Fatal(err)
	}
	FillFiles(t, d.MountPoint, FillOptions{Seed: 1, Files: 20, MaxSize: 256 << 10})
	before := TreeDigest(t, d.MountPoint)
	if len(before) != 21 {
		t.Fatalf("digest has %d files, want 21", len(before))
	}

	d.Unmount(t)
	if out, err := exec.Command("e2fsck", "-fn", d.Path).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn after unmount: %v\n%s", err, out)
	}
	d.Mount(t)
	got, err := os.ReadFile(filepath.Join(d.MountPoint, "hello"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back %q, %v; want %q", got, err, want)
	}
	after := TreeDigest(t, d.MountPoint)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s: digest %s after remount, %s before", k, after[k], v)
		}
	}
}

// TestMkfsImages makes every filesystem the project parses in plain image
// files, which needs no root, and asks blkid what it sees.
func TestMkfsImages(t *testing.T) {
	Require(t, Commands("blkid"))
	for _, c := range []struct {
		fstype string
		size   int64
		args   []string
	}{
		{"ext2", 16 << 20, []string{"-b", "1024"}},
		{"ext3", 32 << 20, nil},
		{"ext4", 64 << 20, []string{"-O", "bigalloc", "-C", "16384"}},
		{"xfs", 64 << 20, nil},
		{"reiserfs", 64 << 20, nil},
		{"btrfs", 128 << 20, nil},
	} {
		t.Run(c.fstype, func(t *testing.T) {
			img := NewImage(t, c.size)
			MkfsImage(t, img, c.fstype, c.args...)
			out, err := exec.Command("blkid", "-p", "-o", "value", "-s", "TYPE", img).CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != c.fstype {
				t.Fatalf("blkid sees %q (%v), want %s", out, err, c.fstype)
			}
		})
	}
}

// TestNBDServers starts each real server over TCP and a Unix socket and
// checks that nbdinfo sees the export at the right size.
func TestNBDServers(t *testing.T) {
	Require(t, Commands("nbdinfo"))
	const size = 32 << 20
	for _, kind := range []NBDServerKind{NBDServer, QemuNBD, Nbdkit} {
		for _, unix := range []bool{false, true} {
			name := string(kind) + "/tcp"
			if unix {
				name = string(kind) + "/unix"
			}
			t.Run(name, func(t *testing.T) {
				s := StartNBD(t, kind, NBDOptions{Size: size, Unix: unix})
				if got := nbdinfoSize(t, s.URI); got != size {
					t.Fatalf("nbdinfo --size %s = %d, want %d", s.URI, got, size)
				}
			})
		}
	}
}

// TestNBDRestart kills a server and starts it again on the same address,
// as the NBD client's fault tests will.
func TestNBDRestart(t *testing.T) {
	Require(t, Commands("nbdinfo"))
	s := StartNBD(t, Nbdkit, NBDOptions{Size: 1 << 20})
	s.Stop(t)
	if err := exec.Command("nbdinfo", "--size", s.URI).Run(); err == nil {
		t.Fatal("nbdinfo succeeded against a stopped server")
	}
	s.Restart(t)
	if got := nbdinfoSize(t, s.URI); got != 1<<20 {
		t.Fatalf("after restart nbdinfo --size = %d", got)
	}
}

func nbdinfoSize(t *testing.T, uri string) int64 {
	t.Helper()
	out, err := exec.Command("nbdinfo", "--size", uri).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo --size %s: %v: %s", uri, err, out)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		t.Fatalf("nbdinfo printed %q", out)
	}
	return n
}

// TestLibvirtGuest defines and starts a tiny qemu guest and checks that
// libvirtd lists it as running.
func TestLibvirtGuest(t *testing.T) {
	g := DefineGuest(t, GuestOptions{Disks: []GuestDisk{{Format: "raw", Fill: 1 << 20}, {Format: "qcow2", Size: 32 << 20, Fill: 2 << 20}}})
	g.Start(t)
	if !strings.Contains(Virsh(t, "list", "--name"), g.Name) {
		t.Fatalf("virsh list does not show %s", g.Name)
	}
	if st := g.State(t); st != "running" {
		t.Fatalf("guest state %q, want running", st)
	}
	out, err := exec.Command("qemu-img", "info", "--force-share", g.Disks[1]).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "qcow2") {
		t.Fatalf("qemu-img info on the qcow2 disk: %v: %s", err, out)
	}
}

func TestExclusiveSerialises(t *testing.T) {
	// A second holder in another process must wait: flock(1) with -n
	// fails while this test holds the lock.
	Require(t, Commands("flock"))
	Exclusive(t, "testenv-selftest")
	lock := filepath.Join(BaseDir(), "testenv-selftest.lock")
	if err := exec.Command("flock", "-n", lock, "true").Run(); err == nil {
		t.Fatal("another process took the lock while this test held it")
	}
}

func TestTreeDiff(t *testing.T) {
	want := map[string]string{"a": "1", "b": "2"}
	for _, tc := range []struct {
		got  map[string]string
		diff string
	}{
		{map[string]string{"a": "1", "b": "2"}, ""},
		{map[string]string{"a": "1"}, "b is missing (1 files, want 2)"},
		{map[string]string{"a": "1", "b": "3"}, "b differs"},
		{map[string]string{"a": "1", "b": "2", "c": "3"}, "c should not be there (3 files, want 2)"},
	} {
		if d := TreeDiff(want, tc.got); d != tc.diff {
			t.Errorf("TreeDiff(%v, %v) = %q, want %q", want, tc.got, d, tc.diff)
		}
	}
}
