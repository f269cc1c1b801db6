package blockdev

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

const mountInfoPath = "/proc/self/mountinfo"

// readMounts parses this process's mountinfo, keeping the mounts filter
// accepts.
func readMounts(filter func(*Mount) bool) ([]Mount, error) {
	f, err := os.Open(mountInfoPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseMountInfo(f, filter)
}

// blockDevNumber returns the device number of the block device at path.
func blockDevNumber(path string) (major, minor uint32, err error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, 0, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, 0, &os.PathError{Op: "stat", Path: path, Err: ErrNotBlockDevice}
	}
	return unix.Major(st.Rdev), unix.Minor(st.Rdev), nil
}

func mountsOf(device string) ([]Mount, error) {
	major, minor, err := blockDevNumber(device)
	if err != nil {
		return nil, err
	}
	return readMounts(func(m *Mount) bool { return m.Major == major && m.Minor == minor })
}

func deviceOf(path string) (string, Mount, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", Mount{}, err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	var st unix.Stat_t
	if err := unix.Stat(abs, &st); err != nil {
		return "", Mount{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	major, minor := unix.Major(st.Dev), unix.Minor(st.Dev)
	mounts, err := readMounts(func(m *Mount) bool { return m.Major == major && m.Minor == minor })
	if err != nil {
		return "", Mount{}, err
	}
	// The mount path is under: the longest mount point that is a prefix
	// of path (several bind mounts of one filesystem may qualify).
	var best *Mount
	for i := range mounts {
		m := &mounts[i]
		if within(abs, m.MountPoint) && (best == nil || len(m.MountPoint) > len(best.MountPoint)) {
			best = m
		}
	}
	if best == nil {
		return "", Mount{}, fmt.Errorf("blockdev: %s (device %d:%d) is under no mount in %s", path, major, minor, mountInfoPath)
	}
	dev, err := devicePath(major, minor, best.Source)
	if err != nil {
		return "", *best, &os.PathError{Op: "deviceof", Path: path, Err: err}
	}
	return dev, *best, nil
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	if dir == "/" || path == dir {
		return true
	}
	return strings.HasPrefix(path, dir+"/")
}

// devicePath names the block device major:minor: the mount source if that
// is the device, else /dev/ plus the kernel's name for it from sysfs.
func devicePath(major, minor uint32, source string) (string, error) {
	if ma, mi, err := blockDevNumber(source); err == nil && ma == major && mi == minor {
		return source, nil
	}
	uevent, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/uevent", major, minor))
	if err != nil {
		return "", fmt.Errorf("%w: device %d:%d (source %q)", ErrNotBlockDevice, major, minor, source)
	}
	sc := bufio.NewScanner(bytes.NewReader(uevent))
	for sc.Scan() {
		if name, ok := strings.CutPrefix(sc.Text(), "DEVNAME="); ok {
			p := "/dev/" + name
			if ma, mi, err := blockDevNumber(p); err == nil && ma == major && mi == minor {
				return p, nil
			}
			return "", fmt.Errorf("%w: device %d:%d has no node %s", ErrNotBlockDevice, major, minor, p)
		}
	}
	return "", fmt.Errorf("%w: device %d:%d has no DEVNAME in sysfs", ErrNotBlockDevice, major, minor)
}
