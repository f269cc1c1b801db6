package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// checkTargetOutside refuses a local target image that lives on the
// filesystem being backed up: the freeze would block the agent's own
// writes to it, and the image would contain itself.
func checkTargetOutside(target, device string) error {
	var dst unix.Stat_t
	if err := unix.Stat(device, &dst); err != nil {
		return fmt.Errorf("linuxagent: %s: %w", device, err)
	}
	dir := filepath.Dir(target)
	if abs, err := filepath.Abs(target); err == nil {
		dir = filepath.Dir(abs)
	}
	// A directory still to be created lands on its nearest existing
	// ancestor's filesystem.
	var tst unix.Stat_t
	for {
		err := unix.Stat(dir, &tst)
		if err == nil {
			break
		}
		if err != unix.ENOENT || filepath.Dir(dir) == dir {
			return fmt.Errorf("linuxagent: target directory %s: %w", dir, err)
		}
		dir = filepath.Dir(dir)
	}
	if dst.Mode&unix.S_IFMT == unix.S_IFBLK && tst.Dev == dst.Rdev {
		return fmt.Errorf("linuxagent: target %s is on %s itself; put it on another filesystem", target, device)
	}
	if same, _ := sameFile(target, device); same {
		return fmt.Errorf("linuxagent: target and source are the same file")
	}
	return nil
}

func sameFile(a, b string) (bool, error) {
	sa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	sb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(sa, sb), nil
}

// loopDevicesOf returns the loop devices whose backing file is image.
func loopDevicesOf(image string) []string {
	st, err := os.Stat(image)
	if err != nil {
		return nil
	}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if bst, err := os.Stat(strings.TrimSpace(string(data))); err == nil && os.SameFile(st, bst) {
			out = append(out, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(f))))
		}
	}
	return out
}
