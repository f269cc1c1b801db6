package blockdev

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

func loopDevicesOf(file string) ([]string, error) {
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		return nil, &os.PathError{Op: "stat", Path: file, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, &os.PathError{Op: "loopdevicesof", Path: file, Err: errors.New("blockdev: not a regular file")}
	}
	// Only attached loop devices have a loop directory in sysfs.
	attached, err := filepath.Glob("/sys/block/loop*/loop")
	if err != nil {
		return nil, err
	}
	var devs []string
	for _, dir := range attached {
		dev := "/dev/" + filepath.Base(filepath.Dir(dir))
		f, err := os.Open(dev)
		if err != nil {
			continue // detached meanwhile, or no node
		}
		var info *unix.LoopInfo64
		err = rawControl(f, func(fd int) error {
			var e error
			info, e = unix.IoctlLoopGetStatus64(fd)
			return e
		})
		f.Close()
		if err != nil {
			continue // ENXIO: detached meanwhile
		}
		if info.Inode == st.Ino && unix.Major(info.Device) == unix.Major(st.Dev) && unix.Minor(info.Device) == unix.Minor(st.Dev) {
			devs = append(devs, dev)
		}
	}
	slices.SortFunc(devs, func(a, b string) int {
		// loop2 before loop10
		if len(a) != len(b) {
			return len(a) - len(b)
		}
		return strings.Compare(a, b)
	})
	return devs, nil
}

// mountsOfImage is MountsOf for a regular file: the mounts of the loop
// devices it backs.
func mountsOfImage(file string) ([]Mount, error) {
	devs, err := loopDevicesOf(file)
	if err != nil {
		return nil, err
	}
	var mounts []Mount
	for _, d := range devs {
		ms, err := mountsOf(d)
		if err != nil {
			return nil, err
		}
		mounts = append(mounts, ms...)
	}
	return mounts, nil
}
