package blockdev

import (
	"os"

	"golang.org/x/sys/unix"
)

// FIFREEZE and FITHAW are _IOWR('X', 119, int) and _IOWR('X', 120, int)
// from linux/fs.h. golang.org/x/sys/unix does not define them. The encoding
// of _IOWR with a 4-byte argument is the same on every Linux architecture
// Go supports (read|write direction bits are 3 where the direction field
// is 2 bits wide, 6 where it is 3 bits wide; both give 0xc0 in the top
// byte).
const (
	fiFreeze = 0xc0045877
	fiThaw   = 0xc0045878
)

func ioctlNoArg(f *os.File, req uint, name string) error {
	err := rawControl(f, func(fd int) error {
		for {
			_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), 0)
			if e == unix.EINTR {
				continue
			}
			if e != 0 {
				return e
			}
			return nil
		}
	})
	if err != nil {
		return &os.PathError{Op: "ioctl", Path: f.Name(), Err: os.NewSyscallError("ioctl("+name+")", err)}
	}
	return nil
}

func freeze(f *os.File) error       { return ioctlNoArg(f, fiFreeze, "FIFREEZE") }
func thaw(f *os.File) error         { return ioctlNoArg(f, fiThaw, "FITHAW") }
func flushBuffers(f *os.File) error { return ioctlNoArg(f, unix.BLKFLSBUF, "BLKFLSBUF") }

func syncfs(f *os.File) error {
	err := rawControl(f, func(fd int) error { return unix.Syncfs(fd) })
	if err != nil {
		return &os.PathError{Op: "syncfs", Path: f.Name(), Err: os.NewSyscallError("syncfs", err)}
	}
	return nil
}
