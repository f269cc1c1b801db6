package blockdev

import "os"

// Freeze freezes the filesystem that f, an open directory on it (usually
// its mount point), belongs to: ioctl FIFREEZE (see ioctl_fs(2) and the
// kernel's Documentation/filesystems/vfs.rst, freeze_super). The kernel
// first blocks new writes, then writes every dirty buffer of the filesystem
// and its journal to the device, so the device holds a clean, consistent
// filesystem until [Thaw]. Every writer on the machine blocks meanwhile:
// prefer a [Sequencer], which guarantees the thaw. An already frozen
// filesystem gives an error wrapping unix.EBUSY. Needs CAP_SYS_ADMIN.
func Freeze(f *os.File) error { return freeze(f) }

// Thaw thaws the filesystem f belongs to: ioctl FITHAW. A filesystem that
// is not frozen gives an error wrapping unix.EINVAL.
func Thaw(f *os.File) error { return thaw(f) }

// FlushBuffers writes the block device's dirty buffers and drops its
// buffer cache: ioctl BLKFLSBUF on f, an open block device (see
// blockdev(8) --flushbufs). Needs CAP_SYS_ADMIN.
func FlushBuffers(f *os.File) error { return flushBuffers(f) }

// Syncfs writes the dirty data and metadata of the filesystem f belongs to
// (syncfs(2)), without blocking other writers as a freeze does.
func Syncfs(f *os.File) error { return syncfs(f) }
