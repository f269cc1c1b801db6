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
	return mountsOfDevice(major, minor)
}

// mountsOfDevice returns the mounts of the filesystem on the block device
// major:minor. Most filesystems report the device's number in mountinfo
// (and as st_dev); btrfs reports an anonymous one of its own (0:N, and yet
// another st_dev for each subvolume), so a btrfs mount is matched by its
// source, the device node mountinfo names. Of a btrfs spanning several
// devices, only the device mountinfo names is found this way.
func mountsOfDevice(major, minor uint32) ([]Mount, error) {
	return readMounts(func(m *Mount) bool { return onDevice(m, major, minor) })
}

func onDevice(m *Mount, major, minor uint32) bool {
	if m.Major == major && m.Minor == minor {
		return true
	}
	if m.FSType != "btrfs" || !strings.HasPrefix(m.Source, "/") {
		return false
	}
	ma, mi, err := blockDevNumber(m.Source)
	return err == nil && ma == major && mi == minor
}

// mountIDOf returns the ID of the mount path (or, with AT_EMPTY_PATH, fd)
// is on, from statx(2) STATX_MNT_ID (Linux 5.8), and its st_dev; ok is
// false when the kernel does not report the mount ID.
func mountIDOf(fd int, path string, flags int) (id int, major, minor uint32, ok bool, err error) {
	var sx unix.Statx_t
	if err := unix.Statx(fd, path, flags, unix.STATX_MNT_ID, &sx); err != nil {
		return 0, 0, 0, false, err
	}
	return int(sx.Mnt_id), sx.Dev_major, sx.Dev_minor, sx.Mask&unix.STATX_MNT_ID != 0, nil
}

func deviceOf(path string) (string, Mount, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", Mount{}, err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	id, major, minor, haveID, err := mountIDOf(unix.AT_FDCWD, abs, 0)
	if err != nil {
		return "", Mount{}, &os.PathError{Op: "statx", Path: path, Err: err}
	}
	var mounts []Mount
	if haveID {
		// The kernel names the mount: exact, also for btrfs, whose
		// st_dev matches no line of mountinfo.
		mounts, err = readMounts(func(m *Mount) bool { return m.ID == id })
	} else {
		mounts, err = readMounts(func(m *Mount) bool { return m.Major == major && m.Minor == minor })
	}
	if err != nil {
		return "", Mount{}, err
	}
	// Without the mount ID: the longest mount point that is a prefix of
	// path (several bind mounts of one filesystem may qualify).
	var best *Mount
	for i := range mounts {
		m := &mounts[i]
		if (haveID || within(abs, m.MountPoint)) && (best == nil || len(m.MountPoint) > len(best.MountPoint)) {
			best = m
		}
	}
	if best == nil {
		return "", Mount{}, fmt.Errorf("blockdev: %s (device %d:%d) is under no mount in %s", path, major, minor, mountInfoPath)
	}
	dev, err := devicePath(best)
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

// devicePath names the block device of mount m: the mount source if that
// is the device (or, for btrfs, whose device number is anonymous, a block
// device at all), else /dev/ plus the kernel's name for it from sysfs.
func devicePath(m *Mount) (string, error) {
	major, minor, source := m.Major, m.Minor, m.Source
	if ma, mi, err := blockDevNumber(source); err == nil && (ma == major && mi == minor || m.FSType == "btrfs") {
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
