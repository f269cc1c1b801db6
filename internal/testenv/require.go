package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// A Prereq is something an integration test needs from the machine: a
// privilege, a command, a kernel feature or a service.
type Prereq struct {
	// Name says what is needed, in words a developer can act on.
	Name string
	// Check returns nil when the prerequisite is met, or why it is not.
	Check func() error
}

// InCI reports whether the tests run in CI (CI=true), where a missing
// prerequisite is a failure rather than a reason to skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// Require checks each prerequisite in turn. When one is missing, the test is
// skipped with the reason, or fails when [InCI] is true.
func Require(t testing.TB, prereqs ...Prereq) {
	t.Helper()
	for _, p := range prereqs {
		err := p.Check()
		if err == nil {
			continue
		}
		if InCI() {
			t.Fatalf("testenv: %s is required when CI=true: %v", p.Name, err)
			return
		}
		t.Skipf("testenv: skipped, %s is not available: %v (run 'sudo scripts/setup', or set CI=true to make this a failure)", p.Name, err)
	}
}

// Root is met when the test runs as root.
var Root = Prereq{Name: "root", Check: func() error {
	if os.Geteuid() != 0 {
		return errors.New("not running as root")
	}
	return nil
}}

// Commands is met when every named command is on PATH.
func Commands(names ...string) Prereq {
	return Prereq{Name: "commands " + strings.Join(names, ", "), Check: func() error {
		var missing []string
		for _, n := range names {
			if _, err := exec.LookPath(n); err != nil {
				missing = append(missing, n)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("not on PATH: %s", strings.Join(missing, ", "))
		}
		return nil
	}}
}

// LoopDevices is met when the test runs as root and can attach loop devices.
var LoopDevices = Prereq{Name: "loop devices", Check: func() error {
	if err := Root.Check(); err != nil {
		return err
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return fmt.Errorf("no loop driver: %w", err)
	}
	return Commands("losetup", "mount", "umount").Check()
}}

// Mkfs is met when the tools that make a filesystem of the given type are
// installed: ext2, ext3, ext4, xfs, reiserfs, btrfs or vfat.
func Mkfs(fstype string) Prereq {
	p := Commands(mkfsCommand(fstype))
	p.Name = "mkfs for " + fstype
	return p
}

// Mountable is met when the running kernel can mount filesystems of the
// given type (it is listed in /proc/filesystems, or its module loads).
func Mountable(fstype string) Prereq {
	return Prereq{Name: "kernel support for mounting " + fstype, Check: func() error {
		if kernelHasFilesystem(fstype) {
			return nil
		}
		// modprobe is quiet and harmless when the module is absent.
		_ = exec.Command("modprobe", "-q", fstype).Run()
		if kernelHasFilesystem(fstype) {
			return nil
		}
		return fmt.Errorf("%s is not in /proc/filesystems and no module loads", fstype)
	}}
}

func kernelHasFilesystem(fstype string) bool {
	data, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && f[len(f)-1] == fstype {
			return true
		}
	}
	return false
}
