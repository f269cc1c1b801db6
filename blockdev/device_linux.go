package blockdev

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

const oDirect = unix.O_DIRECT

func openDevice(path string, flag int) (*Device, error) {
	f, err := os.OpenFile(path, flag|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	d := &Device{f: f, path: path, direct: flag&unix.O_DIRECT != 0}
	if err := d.probe(); err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

func (d *Device) probe() error {
	st, err := d.f.Stat()
	if err != nil {
		return err
	}
	switch {
	case st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0:
		d.block = true
		if d.size, err = blkGetSize64(d.f); err != nil {
			return &os.PathError{Op: "ioctl", Path: d.path, Err: os.NewSyscallError("ioctl(BLKGETSIZE64)", err)}
		}
		lss, err := ioctlGetUint32(d.f, unix.BLKSSZGET)
		if err != nil {
			return &os.PathError{Op: "ioctl", Path: d.path, Err: os.NewSyscallError("ioctl(BLKSSZGET)", err)}
		}
		pss, err := ioctlGetUint32(d.f, unix.BLKPBSZGET)
		if err != nil {
			return &os.PathError{Op: "ioctl", Path: d.path, Err: os.NewSyscallError("ioctl(BLKPBSZGET)", err)}
		}
		d.logical, d.physical, d.memAlign = int(lss), int(pss), int(lss)
	case st.Mode().IsRegular():
		d.size = st.Size()
		d.logical, d.physical, d.memAlign = 512, 512, 512
		var sx unix.Statx_t
		if err := rawControl(d.f, func(fd int) error {
			return unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN|unix.STATX_BLOCKS, &sx)
		}); err == nil {
			if sx.Mask&unix.STATX_DIOALIGN != 0 && sx.Dio_offset_align > 0 {
				d.logical, d.memAlign = int(sx.Dio_offset_align), int(sx.Dio_mem_align)
			}
			if sx.Blksize > 0 {
				d.physical = int(sx.Blksize)
			}
		}
		if d.physical < d.logical {
			d.physical = d.logical
		}
	default:
		return &os.PathError{Op: "open", Path: d.path, Err: fmt.Errorf("blockdev: %v is neither a block device nor a regular file", st.Mode().Type())}
	}
	if d.logical <= 0 || d.logical&(d.logical-1) != 0 {
		return &os.PathError{Op: "open", Path: d.path, Err: fmt.Errorf("blockdev: logical sector size %d is not a power of two", d.logical)}
	}
	if d.memAlign <= 0 || d.memAlign&(d.memAlign-1) != 0 {
		d.memAlign = d.logical
	}
	return nil
}

// rawControl runs fn on the file's descriptor.
func rawControl(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// blkGetSize64 is ioctl(BLKGETSIZE64): the device size in bytes, a u64.
func blkGetSize64(f *os.File) (int64, error) {
	var size uint64
	err := rawControl(f, func(fd int) error {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size)))
		if e != 0 {
			return e
		}
		return nil
	})
	if err == nil && size > 1<<62 {
		return 0, fmt.Errorf("blockdev: implausible device size %d", size)
	}
	return int64(size), err
}

// ioctlGetUint32 reads an int the kernel writes (BLKSSZGET, BLKPBSZGET).
func ioctlGetUint32(f *os.File, req uint) (uint32, error) {
	var v uint32
	err := rawControl(f, func(fd int) error {
		var e error
		v, e = unix.IoctlGetUint32(fd, req)
		return e
	})
	return v, err
}
