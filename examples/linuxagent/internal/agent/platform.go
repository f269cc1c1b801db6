package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/blockimage/blockimage/examples/linuxagent/internal/engine"
)

// Device is an open device or image file: a blockdev.Device.
type Device interface {
	io.ReaderAt
	Size() int64
	Close() error
}

// Tracer is a change tracer running on one device, seen as the engine's
// change log.
type Tracer interface {
	engine.ChangeLog
	// Save writes the changed-block set, for a daemon that stops and
	// continues later; call it after Stop so that the set is final.
	Save(w io.Writer) error
	// Adopt adds the changes of a set an earlier Tracer saved. The caller
	// vouches that no write was missed in between: the earlier set was
	// complete when its tracer stopped, and the device was not written
	// until this Tracer started. A set that lost events since it started
	// stays incomplete.
	Adopt(saved io.Reader) error
	// Stop ends the tracing.
	Stop() error
	// CompleteAtStop is Complete as Stop found it after its last read of
	// the kernel's buffers, without the mark of the stop itself: what a
	// saved set may claim.
	CompleteAtStop() (bool, string)
}

// Target is where an image goes: an NBD export, possibly served by the
// agent itself from a local file.
type Target interface {
	engine.Sink
	// ReadAt reads back what the target holds, for diff backups and
	// restores. It returns io.EOF only past the end.
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	// Size is the target's size in bytes.
	Size() int64
	// Close releases the connection (and the embedded server, if any).
	Close() error
}

// FreezeReport is what a consistency sequence did.
type FreezeReport struct {
	// Frozen is true when a mounted filesystem was frozen.
	Frozen bool
	// MountPoint is the frozen filesystem's mount point.
	MountPoint string
	// FrozenFor is how long it stayed frozen.
	FrozenFor time.Duration
}

// Mount is one place a device is mounted.
type Mount struct {
	MountPoint, FSType string
}

// Platform reaches the operating system. A nil function means the library
// package behind it is not part of this build; the agent then says so.
type Platform struct {
	// Open opens a block device or image file for reading, or for
	// writing when write is set.
	Open func(path string, write bool) (Device, error)
	// Mounts lists where device is mounted.
	Mounts func(device string) ([]Mount, error)
	// StartTracer starts recording the writes to device.
	StartTracer func(ctx context.Context, device string) (Tracer, error)
	// Sequence runs critical inside the consistency sequence of device:
	// freeze (when mounted), flush the device buffers, flushTracer (when
	// not nil), critical, thaw.
	// The filesystem stays frozen at most deadline (0: the default of
	// package blockdev); past it, it is thawed and the error says the copy
	// is not consistent.
	Sequence func(ctx context.Context, device string, deadline time.Duration, flushTracer func(context.Context) error, critical func(context.Context) error) (FreezeReport, error)
	// WriteCount returns how many sectors the kernel has written to
	// device since boot.
	WriteCount func(device string) (uint64, error)
	// OpenTarget connects to target (an NBD URI or a local image path)
	// for a backup of src: a new local image takes its size, and data to
	// resend after a reconnect is read again from it. diff asks for a
	// target that is read as well as written.
	OpenTarget func(ctx context.Context, target string, src Device, diff bool) (Target, error)
}

// ErrUnavailable reports a platform function that this build lacks.
var ErrUnavailable = errors.New("linuxagent: not available in this build")

// System is the platform of the running machine; the wire_*.go files fill
// in what each library package provides.
var System = Platform{
	Open:       openFile,
	OpenTarget: openTarget,
	WriteCount: writeCount,
}

// osDevice is the fallback Device: a file opened with os.
type osDevice struct {
	*os.File
	size int64
}

func (d *osDevice) Size() int64 { return d.size }

func openFile(path string, write bool) (Device, error) {
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("linuxagent: size of %s: %w", path, err)
	}
	return &osDevice{File: f, size: size}, nil
}

// isRegularFile reports whether path names an image file rather than a
// device: nothing can be frozen or traced there.
func isRegularFile(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular()
}
