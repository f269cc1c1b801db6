package blockdev

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// checkUnmountedUse is asked when no filesystem is mounted from the device
// itself: it returns an error wrapping ErrInUse when the device is still
// written to through something the sequencer cannot freeze: a mounted
// partition of it, a holder (device-mapper, LVM, md RAID, bcache: their
// filesystem is on the holder), or swap. Treating such a device as idle
// would copy it torn.
func checkUnmountedUse(major, minor uint32) error {
	sys := fmt.Sprintf("/sys/dev/block/%d:%d", major, minor)
	devs := [][2]uint32{{major, minor}}
	if err := holders(sys); err != nil {
		return err
	}
	entries, _ := os.ReadDir(sys)
	for _, e := range entries {
		part := filepath.Join(sys, e.Name())
		if _, err := os.Stat(filepath.Join(part, "partition")); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(part, "dev"))
		if err != nil {
			continue
		}
		ma, mi, err := parseDevNumber(strings.TrimSpace(string(b)))
		if err != nil {
			continue
		}
		mounts, err := mountsOfDevice(ma, mi)
		if err != nil {
			return err
		}
		if len(mounts) > 0 {
			return fmt.Errorf("%w: its partition %s is mounted on %s; give the partition as Device", ErrInUse, e.Name(), mounts[0].MountPoint)
		}
		if err := holders(part); err != nil {
			return err
		}
		devs = append(devs, [2]uint32{ma, mi})
	}
	return swapOn(devs)
}

func holders(sys string) error {
	hs, _ := os.ReadDir(filepath.Join(sys, "holders"))
	if len(hs) == 0 {
		return nil
	}
	var names []string
	for _, h := range hs {
		names = append(names, h.Name())
	}
	return fmt.Errorf("%w: %s is held by %s (device-mapper, LVM, RAID...); freeze the filesystem on the holder", ErrInUse, filepath.Base(sys), strings.Join(names, ", "))
}

// swapOn returns an error if one of devs is active swap (/proc/swaps).
func swapOn(devs [][2]uint32) error {
	f, err := os.Open("/proc/swaps")
	if err != nil {
		return nil // no swap support, no swap
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		name, err := unescapeOctal(fields[0])
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(name, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
			continue
		}
		for _, d := range devs {
			if unix.Major(st.Rdev) == d[0] && unix.Minor(st.Rdev) == d[1] {
				return fmt.Errorf("%w: %s is active swap", ErrInUse, name)
			}
		}
	}
	return nil
}
