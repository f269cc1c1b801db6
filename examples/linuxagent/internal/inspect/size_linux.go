package inspect

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// blockDeviceSize asks the kernel for a block device's size in bytes
// (BLKGETSIZE64, see ioctl_list(2) and linux/fs.h).
func blockDeviceSize(f *os.File) (int64, error) {
	var size uint64
	raw, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var errno unix.Errno
	if err := raw.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size)))
	}); err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, &os.PathError{Op: "ioctl", Path: f.Name(), Err: os.NewSyscallError("ioctl(BLKGETSIZE64)", errno)}
	}
	return int64(size), nil
}
