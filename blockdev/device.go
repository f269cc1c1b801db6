package blockdev

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"unsafe"
)

// A Device is an open block device or image file with the geometry a
// backup needs: its size and sector sizes. It is an [io.ReaderAt] and an
// [io.WriterAt], safe for concurrent use as those are.
type Device struct {
	f        *os.File
	path     string
	block    bool  // a block device, not a regular file
	size     int64 // fixed for block devices; files are asked each time
	logical  int
	physical int
	direct   bool // opened with O_DIRECT
	memAlign int  // buffer address alignment O_DIRECT needs
}

// ErrUnaligned is returned by [Device.WriteAt] on a device opened with
// O_DIRECT when the buffer, its length or the offset is not aligned to the
// logical sector size. Reads are never unaligned: ReadAt goes through an
// aligned buffer of its own when the caller's is not.
var ErrUnaligned = errors.New("blockdev: O_DIRECT write not aligned to the logical sector size")

// Open opens a block device or a regular image file. flag is os.O_RDONLY
// or os.O_RDWR, optionally with syscall.O_DIRECT (Linux) to bypass the
// page cache; no other flags are accepted, so Open never creates or
// truncates anything. Size and sector sizes come from BLKGETSIZE64,
// BLKSSZGET and BLKPBSZGET for a block device (see ioctl_list(2)); for a
// regular file, from its size and, where the kernel reports it, its O_DIRECT
// alignment (statx(2) STATX_DIOALIGN), else 512 and the file system's block
// size.
func Open(path string, flag int) (*Device, error) {
	if acc := flag & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR); acc != os.O_RDONLY && acc != os.O_RDWR {
		return nil, &os.PathError{Op: "open", Path: path, Err: errors.New("blockdev: flag must be os.O_RDONLY or os.O_RDWR")}
	}
	if rest := flag &^ (os.O_RDONLY | os.O_WRONLY | os.O_RDWR | oDirect); rest != 0 {
		return nil, &os.PathError{Op: "open", Path: path, Err: fmt.Errorf("blockdev: unsupported open flags %#x", rest)}
	}
	return openDevice(path, flag)
}

// Path returns the path the device was opened with.
func (d *Device) Path() string { return d.path }

// IsBlockDevice reports whether the device is a block device rather than
// a regular file.
func (d *Device) IsBlockDevice() bool { return d.block }

// Size returns the size in bytes: the block device's capacity, or the
// file's current size.
func (d *Device) Size() int64 {
	if d.block {
		return d.size
	}
	st, err := d.f.Stat()
	if err != nil {
		return d.size
	}
	return st.Size()
}

// LogicalSectorSize returns the smallest unit the device addresses, in
// bytes (512 or 4096 on most disks); O_DIRECT I/O is aligned to it.
func (d *Device) LogicalSectorSize() int { return d.logical }

// PhysicalSectorSize returns the unit the device writes atomically, in
// bytes; reads and writes aligned to it avoid read-modify-write inside the
// disk.
func (d *Device) PhysicalSectorSize() int { return d.physical }

// File returns the underlying file, for ioctls this package does not wrap.
// The Device still owns it.
func (d *Device) File() *os.File { return d.f }

// ReadAt reads len(p) bytes at off, as [io.ReaderAt]: fewer only at the end
// of the device, with io.EOF. With O_DIRECT, an unaligned request is served
// through an aligned buffer.
func (d *Device) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, &os.PathError{Op: "read", Path: d.path, Err: errors.New("blockdev: negative offset")}
	}
	if off > math.MaxInt64-int64(len(p))-bounceMax {
		// Far beyond any device (sizes stop at 2^62): the end of it,
		// and no offset arithmetic below can overflow.
		return 0, io.EOF
	}
	if !d.direct || d.aligned(p, off) {
		return d.f.ReadAt(p, off)
	}
	return d.readBounce(p, off)
}

// WriteAt writes p at off, as [io.WriterAt]. On a device opened with
// O_DIRECT, p, len(p) and off must be aligned (see [AlignedBuffer]), else
// the error wraps [ErrUnaligned].
func (d *Device) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, &os.PathError{Op: "write", Path: d.path, Err: errors.New("blockdev: negative offset")}
	}
	if d.direct && !d.aligned(p, off) {
		return 0, &os.PathError{Op: "write", Path: d.path, Err: ErrUnaligned}
	}
	return d.f.WriteAt(p, off)
}

// Sync flushes what was written to the device or file to stable storage.
func (d *Device) Sync() error { return d.f.Sync() }

// Close closes the device.
func (d *Device) Close() error { return d.f.Close() }

func (d *Device) aligned(p []byte, off int64) bool {
	a := int64(d.logical)
	if off%a != 0 || int64(len(p))%a != 0 {
		return false
	}
	return len(p) == 0 || uintptr(unsafe.Pointer(&p[0]))%uintptr(d.memAlign) == 0
}

// bounceMax bounds the aligned buffer one unaligned O_DIRECT read uses;
// larger requests are read through it in pieces. It is a multiple of every
// sector size.
const bounceMax = 1 << 20

func (d *Device) readBounce(p []byte, off int64) (int, error) {
	a := int64(d.logical)
	first := off - off%a
	span := min((off+int64(len(p))+a-1)/a*a-first, bounceMax)
	bounce := AlignedBuffer(int(span), d.memAlign)
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		start := pos - pos%a
		want := min((int64(len(p)-n)+(pos-start)+a-1)/a*a, int64(len(bounce)))
		buf := bounce[:want]
		m, err := d.f.ReadAt(buf, start)
		skip := int(pos - start)
		if m > skip {
			c := copy(p[n:], buf[skip:m])
			n += c
		}
		if err != nil {
			if err == io.EOF && n == len(p) {
				return n, nil
			}
			return n, err
		}
	}
	return n, nil
}

// AlignedBuffer returns a zeroed buffer of n bytes whose address is a
// multiple of align (a power of two; 4096 suits every O_DIRECT device),
// for O_DIRECT reads and writes.
func AlignedBuffer(n, align int) []byte {
	if align <= 0 || align&(align-1) != 0 {
		align = 4096
	}
	b := make([]byte, n+align)
	shift := 0
	if r := int(uintptr(unsafe.Pointer(&b[0])) % uintptr(align)); r != 0 {
		shift = align - r
	}
	return b[shift : shift+n : shift+n]
}
