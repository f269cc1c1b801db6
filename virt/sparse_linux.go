package virt

import (
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// nextData returns the first data region [start, end) at or after off,
// bounded by size, using lseek(SEEK_DATA/SEEK_HOLE) (lseek(2)). When there
// is no more data it returns (size, size). Files and devices that do not
// support the lookup (block devices report everything as data) are
// treated as all data.
func nextData(f *os.File, off, size int64) (int64, int64, error) {
	start, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	if err != nil {
		if errors.Is(err, unix.ENXIO) {
			return size, size, nil
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			return off, size, nil
		}
		return 0, 0, os.NewSyscallError("lseek(SEEK_DATA)", err)
	}
	if start >= size {
		return size, size, nil
	}
	end, err := unix.Seek(int(f.Fd()), start, unix.SEEK_HOLE)
	if err != nil {
		if errors.Is(err, unix.ENXIO) {
			// The file shrank under us; let ReadAt report it.
			return start, size, nil
		}
		return 0, 0, os.NewSyscallError("lseek(SEEK_HOLE)", err)
	}
	_, _ = unix.Seek(int(f.Fd()), 0, io.SeekStart)
	return start, min(end, size), nil
}
