package blockdev

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

// Defaults for [Sequencer] fields left zero.
const (
	// DefaultDeadline is how long a filesystem may stay frozen when
	// Sequencer.Deadline is zero. Writers on the machine block while it
	// is frozen; ten seconds is long for an interactive service and short
	// for copying much data, so set Deadline for the work at hand.
	DefaultDeadline = 10 * time.Second
	// DefaultWatchdogGrace is how long after the deadline the watchdog
	// thaws on its own when Sequencer.WatchdogGrace is zero.
	DefaultWatchdogGrace = 2 * time.Second
)

var (
	// ErrNotConsistent means the sequence did not hold the filesystem
	// frozen for the whole critical section: it overran its deadline, was
	// cancelled or interrupted, the watchdog exited, or someone else
	// thawed the filesystem meanwhile. The filesystem is thawed; what the critical section
	// copied is not a consistent image.
	ErrNotConsistent = errors.New("blockdev: image not consistent, filesystem thawed before the critical section completed")
	// ErrRefused means the sequencer would not freeze the filesystem: it
	// is mounted at / or holds the running program, and freezing it could
	// hang the program or the machine. Set Sequencer.AllowSelf to override.
	ErrRefused = errors.New("blockdev: refusing to freeze")
	// ErrInterrupted means SIGINT or SIGTERM arrived while frozen; the
	// error also wraps ErrNotConsistent.
	ErrInterrupted = errors.New("blockdev: interrupted by a signal while frozen")
	// ErrInUse means the device has no mounted filesystem of its own but
	// is written to through something that cannot be frozen from it: a
	// mounted partition, a device-mapper or RAID holder, or swap. Nothing
	// was frozen and the critical section did not run.
	ErrInUse = errors.New("blockdev: device in use")
	// ErrWatchdog means the watchdog child could not be started, so the
	// sequencer did not freeze.
	ErrWatchdog = errors.New("blockdev: freeze watchdog unavailable")
)

// A Sequencer runs the consistency sequence a backup needs on the
// filesystem of one block device, in the order of the design:
//
//  1. syncfs, while writers still run, so that the freeze has little left
//     to write;
//  2. freeze the filesystem (FIFREEZE): its dirty buffers and journal are
//     written and new writes block;
//  3. flush the block device's buffers (BLKFLSBUF);
//  4. flush the change tracer ([Sequencer.FlushTracer]);
//  5. run the critical section, the caller's copy of what must be
//     consistent;
//  6. thaw (FITHAW).
//
// The filesystem is thawed on every exit path: success, error, panic,
// context cancellation, SIGINT or SIGTERM, the deadline, and the death of
// the process itself (see the package documentation for the watchdog and
// its bound). A device that is not mounted is not frozen: steps 3 to 5 run
// (without a deadline: no writer waits) and the report says Frozen is
// false; but a device used otherwise (a mounted partition of it, a
// device-mapper or RAID holder, swap) is an error wrapping ErrInUse. A filesystem mounted several times
// (bind mounts) is frozen once.
//
// The zero value with Device set is ready to use. A Sequencer must not be
// changed while Run runs; it may Run several times, and Sequencers on
// different filesystems may Run concurrently (on the same one, the second
// freeze fails with EBUSY).
type Sequencer struct {
	// Device is the block device (/dev/sdb1, /dev/loop0, a symlink to
	// one) whose filesystem is frozen. Required.
	Device string
	// Deadline is the longest the filesystem may stay frozen, from the
	// moment FIFREEZE returns. When it passes, the filesystem is thawed at
	// once, the critical section's context is cancelled, and Run returns
	// an error wrapping ErrNotConsistent. Zero means DefaultDeadline.
	Deadline time.Duration
	// FlushTracer is called after BLKFLSBUF, while frozen, so that every
	// write made before the freeze is in the change tracer's set (for
	// example tracer.(*Tracer).Flush). It gets the critical section's
	// context and, like it, must return promptly once that is cancelled:
	// Run waits for it. Nil skips the step.
	FlushTracer func(context.Context) error
	// AllowSelf allows freezing the filesystem mounted at / or holding the
	// running program's binary, which Run otherwise refuses with
	// ErrRefused: on a frozen root every write blocks, logging and
	// temporary files included, so the critical section must write
	// nothing there.
	AllowSelf bool
	// WatchdogGrace is how long after the deadline the watchdog thaws the
	// filesystem by itself if this process has not (because it hangs or
	// a thread of it is stuck writing to the frozen filesystem). Zero
	// means DefaultWatchdogGrace.
	WatchdogGrace time.Duration
	// SignalsHandled says the program handles SIGINT and SIGTERM itself
	// (signal.Notify). On such a signal while frozen, Run always thaws at
	// once and cancels the critical section; then, unless
	// SignalsHandled is set, it re-raises the signal before returning so
	// that the program's default reaction (termination) happens as it
	// would have without the freeze. A program with its own handler has
	// already received the signal and sets SignalsHandled so that it does
	// not see it twice.
	SignalsHandled bool
	// Logf, if set, receives a line with each step's duration once the
	// filesystem is thawed (never while frozen: the log may live on the
	// frozen filesystem), and the stack of a panic in the critical
	// section before Run re-raises it.
	Logf func(format string, args ...any)
}

// A Report says what a [Sequencer.Run] did and how long each step took.
type Report struct {
	// Device is the device the sequencer worked on, as given.
	Device string
	// Frozen says whether a filesystem was frozen; false for a device
	// that was not mounted, or when the freeze itself failed.
	Frozen bool
	// MountPoint and FSType describe the mount that was frozen ("" when
	// not frozen).
	MountPoint, FSType string
	// FrozenFor is how long writers were blocked: from the FIFREEZE call
	// to the return of FITHAW. For an unmounted device, zero.
	FrozenFor time.Duration
	// Step durations: the pre-freeze syncfs, FIFREEZE, BLKFLSBUF, the
	// tracer flush, the critical section (as long as it ran while
	// frozen), and FITHAW.
	Syncfs, Freeze, FlushBuffers, FlushTracer, Critical, Thaw time.Duration
	// Cut says the sequence was cut short (deadline, cancellation,
	// signal, the watchdog's exit) and the filesystem thawed before the
	// critical section returned.
	Cut bool
	// Signal is the signal that cut the sequence, if one did.
	Signal os.Signal
}

func (s *Sequencer) deadline() time.Duration {
	if s.Deadline == 0 {
		return DefaultDeadline
	}
	return s.Deadline
}

func (s *Sequencer) grace() time.Duration {
	if s.WatchdogGrace == 0 {
		return DefaultWatchdogGrace
	}
	return s.WatchdogGrace
}

func (s *Sequencer) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

// Run runs the sequence (see [Sequencer]) around critical, which receives
// a context cancelled when the deadline passes, ctx is cancelled, a
// signal arrives or the watchdog exits: it must stop promptly then, for Run waits for it to
// return (after thawing) and reports why it was cut. The critical section
// runs on a goroutine of its own; a panic in it is re-raised by Run after
// the thaw. It must not write to the frozen filesystem: such a write
// blocks until the thaw.
//
// The error wraps ErrNotConsistent when the critical section did not
// complete while frozen, ErrRefused when the filesystem may not be frozen,
// ErrWatchdog when the watchdog could not start (and nothing was frozen),
// and otherwise the first error of a step or of critical. The Report is
// filled as far as the sequence went, also on error.
func (s *Sequencer) Run(ctx context.Context, critical func(context.Context) error) (Report, error) {
	rep := Report{Device: s.Device}
	switch {
	case s.Device == "":
		return rep, errors.New("blockdev: Sequencer.Device is empty")
	case s.Deadline < 0 || s.WatchdogGrace < 0:
		return rep, fmt.Errorf("blockdev: negative Deadline %v or WatchdogGrace %v", s.Deadline, s.WatchdogGrace)
	case critical == nil:
		return rep, errors.New("blockdev: nil critical section")
	}
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	return s.run(ctx, critical, rep)
}
