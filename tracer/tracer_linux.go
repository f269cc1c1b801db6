package tracer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A blockDevice is what Start learns about the device from sysfs.
type blockDevice struct {
	path      string
	disk      string // whole disk name, e.g. loop0 or sda
	diskDev   uint32 // kernel dev_t of the whole disk: major<<20 | minor
	partStart int64  // bytes; 0 for a whole disk
	size      int64  // bytes
	diskSys   string // /sys/block/DISK
}

func kernelDev(major, minor uint32) uint32 { return major<<20 | minor }

func readSysString(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// A sysFile is a small sysfs or tracefs file read again and again, as the
// readers' loss checks and the session's settings checks do. It stays open, and each read is
// a pread at offset 0, for which the kernel renders the file afresh: one
// system call instead of os.ReadFile's open, stat, poller registration,
// fcntls, reads and close. (These made up a sixth of the tracer's CPU time
// under fio, measured with perf.)
type sysFile struct {
	path   string
	fd     int // -1 until the first read
	buf    []byte
	raw    bool // read with rawPreadAt0 (see rawsys_linux.go)
	closed bool // reads fail from now on
}

func newSysFile(path string) *sysFile { return &sysFile{path: path, fd: -1} }

// newRawSysFile is a sysFile read with raw system calls: only for files
// whose read takes no lock in the kernel (see rawsys_linux.go).
func newRawSysFile(path string) *sysFile { return &sysFile{path: path, fd: -1, raw: true} }

// read returns the file's content without surrounding white space.
func (f *sysFile) read() (string, error) {
	if f.closed {
		return "", &os.PathError{Op: "read", Path: f.path, Err: os.ErrClosed}
	}
	if f.fd < 0 {
		fd, err := unix.Open(f.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", &os.PathError{Op: "open", Path: f.path, Err: err}
		}
		f.fd = fd
		if f.buf == nil {
			f.buf = make([]byte, 512)
		}
	}
	for {
		var n int
		var err error
		if f.raw {
			n, err = rawPreadAt0(f.fd, f.buf)
		} else {
			n, err = unix.Pread(f.fd, f.buf, 0)
		}
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return "", &os.PathError{Op: "read", Path: f.path, Err: err}
		case n < len(f.buf):
			return strings.TrimSpace(string(f.buf[:n])), nil
		case len(f.buf) >= 1<<20:
			return "", fmt.Errorf("%s: larger than 1 MiB", f.path)
		}
		// It may not have been all: read again with room to spare.
		f.buf = make([]byte, 2*len(f.buf))
	}
}

// close closes the file for good: a later read fails rather than opens
// it again.
func (f *sysFile) close() {
	f.closed = true
	if f.fd >= 0 {
		unix.Close(f.fd)
		f.fd = -1
	}
}

func readSysInt(path string) (int64, error) {
	s, err := readSysString(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}

func parseDev(s string) (uint32, error) {
	ma, mi, ok := strings.Cut(s, ":")
	if !ok {
		return 0, fmt.Errorf("bad dev %q", s)
	}
	a, err1 := strconv.ParseUint(ma, 10, 12)
	b, err2 := strconv.ParseUint(mi, 10, 20)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad dev %q", s)
	}
	return kernelDev(uint32(a), uint32(b)), nil
}

func lookupDevice(path string) (*blockDevice, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return nil, fmt.Errorf("tracer: %s is not a block device: %w", path, ErrUnavailable)
	}
	sys, err := filepath.EvalSymlinks(fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev))))
	if err != nil {
		return nil, fmt.Errorf("tracer: sysfs entry of %s: %w", path, err)
	}
	d := &blockDevice{path: path}
	sectors, err := readSysInt(filepath.Join(sys, "size"))
	if err != nil {
		return nil, fmt.Errorf("tracer: size of %s: %w", path, err)
	}
	d.size = sectors * sectorSize
	diskSys := sys
	if _, err := os.Stat(filepath.Join(sys, "partition")); err == nil {
		start, err := readSysInt(filepath.Join(sys, "start"))
		if err != nil {
			return nil, fmt.Errorf("tracer: start of partition %s: %w", path, err)
		}
		d.partStart = start * sectorSize
		diskSys = filepath.Dir(sys)
	}
	d.disk = filepath.Base(diskSys)
	dev, err := readSysString(filepath.Join(diskSys, "dev"))
	if err != nil {
		return nil, fmt.Errorf("tracer: dev of %s: %w", d.disk, err)
	}
	if d.diskDev, err = parseDev(dev); err != nil {
		return nil, fmt.Errorf("tracer: %s: %w", d.disk, err)
	}
	d.diskSys = filepath.Join("/sys/block", d.disk)
	if z, err := readSysString(filepath.Join(d.diskSys, "queue", "zoned")); err == nil && z != "none" {
		// Zone appends and resets do not say which blocks they change,
		// and version 7 traces drop zone operations altogether.
		return nil, fmt.Errorf("tracer: %s is a zoned device (%s): %w", d.disk, z, ErrUnavailable)
	}
	return d, nil
}

// Start begins recording the writes to device, a block device (a whole
// disk or a partition), into a Set, and returns once tracing is on: every
// write submitted after Start returns is recorded. It must run as root. It
// refuses with ErrBusy when another tool uses ftrace or blktrace.
func Start(ctx context.Context, device string, o Options) (*Tracer, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	d, err := lookupDevice(device)
	if err != nil {
		return nil, err
	}
	set := o.Set
	if set == nil {
		set = NewSet(d.size, o.BlockSize)
	} else {
		if set.Size() != d.size || set.BlockSize() != o.BlockSize {
			return nil, fmt.Errorf("tracer: set of %d bytes at %d-byte blocks for device of %d bytes at %d: %w",
				set.Size(), set.BlockSize(), d.size, o.BlockSize, ErrGeometry)
		}
		set.MarkIncomplete("tracking resumed: writes before this start are unknown")
	}
	t := &Tracer{set: set, device: device}
	var classicErr error
	// Once this process runs the ftrace session, Auto joins it: the
	// kernel allows one blktrace per queue, and the session may already
	// trace this disk.
	sessionMu.Lock()
	joined := session != nil
	sessionMu.Unlock()
	if o.Source == Classic || o.Source == Auto && !joined {
		src, err := startClassic(ctx, d, set, o)
		if err == nil {
			t.src, t.source = src, Classic
			return t, nil
		}
		if o.Source == Classic || !errors.Is(err, errRelayUnavailable) {
			return nil, err
		}
		classicErr = err
	}
	src, err := startFtrace(ctx, d, set, o)
	if err != nil {
		if classicErr != nil {
			return nil, fmt.Errorf("%w (classic blktrace: %v)", err, classicErr)
		}
		return nil, err
	}
	t.src, t.source = src, Ftrace
	return t, nil
}

// writeFile writes a control file of tracefs or sysfs.
func writeFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(value); err != nil {
		f.Close()
		return fmt.Errorf("write %q to %s: %w", value, path, err)
	}
	return f.Close()
}
