package blockdev

import (
	"errors"
	"os"
)

// ErrNotBlockDevice is returned when a path that must name a block device,
// or lie on a filesystem backed by one, does not.
var ErrNotBlockDevice = errors.New("blockdev: not a block device")

// MountsOf returns every mount of the filesystem on device, a block device
// path such as /dev/sda1 or /dev/loop0 (symlinks such as
// /dev/disk/by-uuid/... are followed), from /proc/self/mountinfo. Mounts
// are matched by device number (major:minor), not by the source string, so
// a device mounted under another name, a loop device, and every bind mount
// of it are all found. btrfs shows no device's number in mountinfo (see
// [Mount]), so its mounts are matched by their source, the device node
// mountinfo names, compared by device number; a btrfs spanning several
// devices is found from the one it names only. The result is empty when
// the device is not mounted in this mount namespace.
// For a regular file, the result is the mounts of the loop devices it is
// attached to (see [LoopDevicesOf]). Any other path gives an error
// wrapping [ErrNotBlockDevice].
func MountsOf(device string) ([]Mount, error) {
	if st, err := os.Stat(device); err == nil && st.Mode().IsRegular() {
		return mountsOfImage(device)
	}
	return mountsOf(device)
}

// LoopDevicesOf returns the loop devices (/dev/loopN) attached to the
// regular file file, matched by device and inode number
// (LOOP_GET_STATUS64, see loop(4)), so another path to the same file
// matches too. The result is empty when none is attached.
func LoopDevicesOf(file string) ([]string, error) { return loopDevicesOf(file) }

// DeviceOf returns the block device (/dev/NAME) holding the filesystem
// that path, any file or directory on it, belongs to, and the mount that
// path is under: the one the kernel names (statx(2) STATX_MNT_ID), or
// before Linux 5.8 the longest mount point above path with path's st_dev.
// For btrfs the device is the mount's source. A path on a filesystem with
// no block device (tmpfs, proc, NFS...) gives an error wrapping
// [ErrNotBlockDevice].
func DeviceOf(path string) (device string, m Mount, err error) { return deviceOf(path) }
