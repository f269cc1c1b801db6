package tracer

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// blktrace ioctls, include/uapi/linux/fs.h: _IOWR(0x12, 115, struct
// blk_user_trace_setup) and _IO(0x12, 116..118). See blktrace(8) and
// Documentation/trace/ftrace.rst.
const (
	ioctlBlkTraceSetup    = 0xc0481273
	ioctlBlkTraceStart    = 0x1274
	ioctlBlkTraceStop     = 0x1275
	ioctlBlkTraceTeardown = 0x1276
	blkUserTraceSetupLen  = 72
)

// errRelayUnavailable: BLKTRACESETUP worked but the relay files cannot be
// read (EPERM under a locked-down debugfs, as on the machines this was
// written on); Auto then uses ftrace.
var errRelayUnavailable = errors.New("tracer: blktrace relay files cannot be opened")

// encodeTraceSetup lays out struct blk_user_trace_setup:
//
//	char name[32]; u16 act_mask; (pad 2) u32 buf_size; u32 buf_nr;
//	(pad 4) u64 start_lba; u64 end_lba; u32 pid; (pad 4)
func encodeTraceSetup(actMask uint16, bufSize, bufNr uint32) [blkUserTraceSetupLen]byte {
	var b [blkUserTraceSetupLen]byte
	binary.LittleEndian.PutUint16(b[32:], actMask)
	binary.LittleEndian.PutUint32(b[36:], bufSize)
	binary.LittleEndian.PutUint32(b[40:], bufNr)
	return b
}

// traceSetupName returns the name the kernel wrote back: the debugfs
// directory of the trace under debugfs/block/.
func traceSetupName(b [blkUserTraceSetupLen]byte) string {
	name := b[:32]
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	return string(name)
}

func blkIoctl(fd int, req uintptr, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}

// classicSource reads the relay files of a BLKTRACESETUP trace.
type classicSource struct {
	devFD    int
	set      *Set
	dev      *blockDevice
	dir      string // debugfs/block/NAME
	readers  []*cpuReader
	mu       sync.Mutex
	seq      SeqChecker
	stopOnce sync.Once
}

func findDebugfs() (string, error) {
	dir := "/sys/kernel/debug"
	if _, err := os.Stat(filepath.Join(dir, "block")); err == nil {
		return dir, nil
	}
	if err := unix.Mount("debugfs", dir, "debugfs", 0, ""); err != nil && err != unix.EBUSY {
		return "", fmt.Errorf("tracer: mount debugfs on %s: %w: %w", dir, err, errRelayUnavailable)
	}
	return dir, nil
}

func startClassic(ctx context.Context, d *blockDevice, set *Set, o Options) (_ *classicSource, err error) {
	debugfs, err := findDebugfs()
	if err != nil {
		return nil, err
	}
	fd, err := unix.Open(d.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: d.path, Err: err}
	}
	c := &classicSource{devFD: fd, set: set, dev: d}
	bufKB := o.BufferSizeKB
	if bufKB == 0 {
		bufKB = 512
	}
	buts := encodeTraceSetup(TCWrite, uint32(bufKB)<<10, 4)
	if err := blkIoctl(fd, ioctlBlkTraceSetup, unsafe.Pointer(&buts)); err != nil {
		unix.Close(fd)
		if err == unix.EBUSY {
			return nil, fmt.Errorf("tracer: BLKTRACESETUP %s: %w: %w", d.path, err, ErrBusy)
		}
		return nil, fmt.Errorf("tracer: BLKTRACESETUP %s: %w: %w", d.path, err, errRelayUnavailable)
	}
	defer func() {
		if err != nil {
			c.teardown()
		}
	}()
	c.dir = filepath.Join(debugfs, "block", traceSetupName(buts))
	files, _ := filepath.Glob(filepath.Join(c.dir, "trace[0-9]*"))
	if len(files) == 0 {
		return nil, fmt.Errorf("tracer: no relay files in %s: %w", c.dir, errRelayUnavailable)
	}
	for _, p := range files {
		cpu, _ := strconv.Atoi(filepath.Base(p)[len("trace"):])
		rfd, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("tracer: open %s: %w: %w", p, err, errRelayUnavailable)
		}
		var pending []byte
		buf := make([]byte, 256<<10)
		r, err := newCPUReader(cpu, rfd, p, func(drainMode) (bool, error) { return c.drain(rfd, buf, &pending) })
		if err != nil {
			return nil, err
		}
		c.readers = append(c.readers, r)
	}
	if err := blkIoctl(fd, ioctlBlkTraceStart, nil); err != nil {
		return nil, fmt.Errorf("tracer: BLKTRACESTART %s: %w", d.path, err)
	}
	for _, r := range c.readers {
		go r.run(o.PollInterval, func(bool) { c.checkDropped() })
	}
	return c, nil
}

// drain reads the relay file until it is empty and reports whether it
// read anything. Records may straddle reads; the tail waits in pending,
// which never exceeds one record.
func (c *classicSource) drain(fd int, buf []byte, pending *[]byte) (took bool, err error) {
	for {
		n, err := readNonblock(fd, buf)
		if err != nil {
			c.set.MarkIncomplete(fmt.Sprintf("reading the relay file: %v", err))
			return took, err
		}
		if n == 0 {
			return took, nil
		}
		took = true
		data := append(*pending, buf[:n]...)
		rest, err := c.parse(data)
		if err != nil {
			c.set.MarkIncomplete(fmt.Sprintf("unreadable blktrace stream: %v", err))
			rest = nil
		}
		*pending = append((*pending)[:0], rest...)
	}
}

// parse applies the complete records of stream and returns the incomplete
// tail.
func (c *classicSource) parse(stream []byte) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return parseRelayStream(stream, &c.seq, func(r Record) { apply(c.set, r, c.dev.partStart) }, c.set)
}

// parseRelayStream decodes consecutive relay records, checks their
// sequence numbers, and returns the bytes of a trailing partial record.
func parseRelayStream(stream []byte, seq *SeqChecker, fn func(Record), set *Set) ([]byte, error) {
	for len(stream) > 0 {
		r, n, err := DecodeRecord(stream)
		if errors.Is(err, ErrShortRecord) {
			return stream, nil
		}
		if err != nil {
			return nil, err
		}
		if gap := seq.Check(r); gap != 0 {
			set.MarkIncomplete(fmt.Sprintf("cpu%d: %d blktrace events missing before sequence %d", r.CPU, gap, r.Sequence))
		}
		fn(r)
		stream = stream[n:]
	}
	return nil, nil
}

func (c *classicSource) checkDropped() {
	n, err := readSysInt(filepath.Join(c.dir, "dropped"))
	if err != nil {
		c.set.MarkIncomplete(fmt.Sprintf("blktrace dropped counter unreadable: %v", err))
		return
	}
	if n > 0 {
		c.set.MarkIncomplete(fmt.Sprintf("blktrace dropped %d events", n))
	}
}

func (c *classicSource) flush(ctx context.Context) error {
	err := flushAll(ctx, c.readers)
	c.checkDropped()
	return err
}

func (c *classicSource) stop() error {
	var err error
	c.stopOnce.Do(func() {
		blkIoctl(c.devFD, ioctlBlkTraceStop, nil)
		stopAll(c.readers)
		c.checkDropped()
		c.readers = nil
		err = c.teardown()
	})
	return err
}

func (c *classicSource) teardown() error {
	for _, r := range c.readers {
		r.close()
	}
	blkIoctl(c.devFD, ioctlBlkTraceStop, nil)
	err := blkIoctl(c.devFD, ioctlBlkTraceTeardown, nil)
	unix.Close(c.devFD)
	if err != nil {
		return fmt.Errorf("tracer: BLKTRACETEARDOWN %s: %w", c.dev.path, err)
	}
	return nil
}
