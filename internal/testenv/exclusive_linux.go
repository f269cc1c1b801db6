package testenv

import (
	"errors"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// waitExclusive waits until the block device at path can be opened with
// O_EXCL, which the kernel refuses while a filesystem (in any mount
// namespace) or another exclusive holder uses it, or until limit passes.
func waitExclusive(path string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
		if err == nil {
			return unix.Close(fd)
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
