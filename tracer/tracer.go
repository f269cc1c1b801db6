package tracer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// A Source is the kernel interface a Tracer reads.
type Source int

const (
	// Auto tries Classic and falls back to Ftrace when the relay files
	// cannot be opened (as on kernels and machines where debugfs relay
	// files are locked down).
	Auto Source = iota
	// Classic is blktrace: BLKTRACESETUP/START/STOP/TEARDOWN on the
	// device and one relay file per CPU under debugfs
	// (block/NAME/traceN), with the relay's dropped counter.
	Classic
	// Ftrace is the ftrace "blk" tracer: current_tracer=blk,
	// /sys/block/DISK/trace/enable=1, and the per-CPU trace_pipe_raw
	// ring-buffer pages, with the overrun and dropped counters of
	// per_cpu/cpuN/stats.
	Ftrace
)

func (s Source) String() string {
	switch s {
	case Auto:
		return "auto"
	case Classic:
		return "classic"
	case Ftrace:
		return "ftrace"
	}
	return fmt.Sprintf("Source(%d)", int(s))
}

// Options configure Start. The zero value works.
type Options struct {
	// BlockSize of the Set, a power of two from 512 bytes. Default 4096.
	BlockSize int
	// Source selects the kernel interface. Default Auto.
	Source Source
	// Set continues tracking into an existing set, typically one read
	// back with ReadSet after a restart. Its device size and block size
	// must match the device. Writes between the end of the previous trace
	// and this Start are unknown, so such a set is marked incomplete.
	// Default: a new, complete set.
	Set *Set
	// PollInterval bounds how long events wait in the kernel's buffers
	// before they are read when the buffers are quiet, and how often the
	// loss counters are checked. Default 1s. A busy buffer wakes the
	// reader earlier (trace_pipe_raw's buffer_percent), and Flush and
	// Stop take everything and check everything at once, so the interval
	// only bounds how stale Set is between flushes and how late a loss
	// shows before the next flush (see Tracer.CompleteAtStop). It is what
	// an idle tracer costs: each interval wakes one reader per CPU, and
	// the other tracing settings are checked. tracing_on, pause-on-trace
	// and the disk's trace/enable are checked every 100ms, whatever the
	// interval, by one goroutine.
	PollInterval time.Duration
	// BufferSizeKB, when not 0, sets the per-CPU ftrace ring size
	// (buffer_size_kb) or the classic relay sub-buffer size for the time
	// of the trace; the previous ftrace size is restored by Stop.
	// Tracers of one process share the ftrace ring: the first one's size
	// applies until the last one stops.
	// Default: leave the kernel's size (ftrace) or 512 KiB x 4 (classic).
	BufferSizeKB int
}

func (o *Options) defaults() error {
	if o.BlockSize == 0 {
		o.BlockSize = DefaultBlockSize
	}
	if bs := int64(o.BlockSize); bs < 512 || bs&(bs-1) != 0 || bs > 1<<30 {
		return fmt.Errorf("tracer: block size %d is not a power of two between 512 and 1 GiB", o.BlockSize)
	}
	if o.PollInterval <= 0 {
		o.PollInterval = time.Second
	}
	if o.BufferSizeKB < 0 {
		return fmt.Errorf("tracer: negative buffer size %d", o.BufferSizeKB)
	}
	return nil
}

// Errors callers branch on.
var (
	// ErrBusy: another tool uses ftrace or blktrace on this machine or
	// device; we refuse rather than trample its settings.
	ErrBusy = errors.New("tracer: tracing is in use by another tool")
	// ErrUnavailable: the kernel offers no usable source (no blktrace
	// support, relay files locked down and Source is Classic, a zoned
	// device, not root...).
	ErrUnavailable = errors.New("tracer: block tracing is unavailable")
	// ErrStopped: the Tracer was stopped.
	ErrStopped = errors.New("tracer: stopped")
)

// A Tracer records the changed blocks of one block device into a Set.
//
// # The flush barrier
//
// Flush is the third flush of a consistent backup, after the freeze
// (FIFREEZE, which writes back and blocks the filesystem) and BLKFLSBUF
// (which writes back the device's page cache): it guarantees that every
// write that completed before Flush was called is in the Set. The original
// design calls it CpuTracer::FlushBuffer. It rests on three facts:
//
//  1. Each data-changing bio emits its queue event into the ring buffer of
//     the CPU that submits it, in the submitter's context, before the I/O
//     starts (see Classify). So once a write has completed, its event is
//     committed in some CPU's buffer.
//  2. With ftrace, Flush then writes a marker into every CPU's ring, with
//     trace_marker from a thread pinned to that CPU. A CPU's ring is FIFO:
//     everything committed on it before the marker precedes the marker.
//     Offline CPUs get no marker (they write nothing new; the drain reads
//     what their rings hold); an online CPU outside the process's cpuset
//     cannot be pinned to, and Flush fails rather than trust the drain.
//  3. Flush asks every CPU's reader for a drain that starts after the
//     request (non-blocking reads until the kernel has nothing), and
//     repeats until each reader has parsed its CPU's marker. Each page is
//     applied to the Set before the reader answers. So when Flush returns,
//     every event of fact 1 is in the Set.
//
// The markers make the barrier independent of how the kernel answers a
// read of a ring it cannot take a page from: trace_pipe_raw answers EAGAIN
// when the ring is empty but also 0 bytes in some states, and a barrier
// that trusted either answer alone would rest on ring-buffer internals.
// When trace_marker is unavailable (the markers option off) and for the
// classic relay files, the drain alone is the barrier: a relay file read
// returns 0 only when no sub-buffer holds unread data. Events that arrive
// after a CPU's drain belong to writes submitted after Flush was called,
// which a caller that froze the filesystem does not wait for. No timing is
// involved. Flush also checks the loss counters, so a Set that lost
// events during the epoch is marked incomplete before the caller cuts it.
//
// Why the marker suffices: the ring buffer disables preemption from the
// reservation of an event to its commit, and an event reserved on a CPU
// precedes, in that CPU's ring, every event reserved there later (an
// interrupt nesting inside a reservation lands after it, and the commit
// pointer only passes both when the outer one commits). The queue event of
// a completed write was committed before the write was even started; the
// marker is reserved, on the same CPU, after Flush was called. So the
// marker follows it.
//
// What the barrier does not cover: I/O the filesystem issues after the
// freeze. ext4 mounted with -o discard sends the discards of deleted files
// from a workqueue after the journal commit, and FIFREEZE does not wait for
// that work (only unmount flushes it). Such a discard can reach the device
// after the consistency point; it is recorded in the next epoch, and the
// blocks it touches are free in the frozen filesystem, so the backup of
// the cut epoch is still consistent. This was the cause of the stress
// test's "missed" 6 MiB ranges: a deleted 6 MiB file's discard.
//
// Loss is never silent: overwritten or dropped ring events, a page flagged
// as following lost events, a sequence gap in classic records, a
// passthrough or zone write of unknown range, a ring that handed out more
// or fewer events than we parsed (another reader consumed them, or the
// ring was reset), another tool changing the tracing settings that make
// the kernel drop events silently (current_tracer, tracing_on,
// buffer_size_kb, tracing_cpumask, pause-on-trace, the disk's enable),
// Stop, and resuming a saved Set all mark the Set incomplete. Start clears
// the pause-on-trace option for the time of the trace, because with it
// set, merely reading the trace file stops recording without a counter.
// It also raises a buffer_percent of 0 to the kernel's default, 50: with
// 0 the readers would wake for every event and spin on the page being
// written. Stop puts both back. A process that dies before its Stop
// cannot, so Start first records what it changes in
// /run/blockimage/tracer-ftrace-settings. Such a process also leaves
// current_tracer at blk, which makes Start refuse (ErrBusy); once the
// caller has reset it to nop, the next Start, in any process, puts back
// the settings the dead process's record names, unless someone changed
// them since.
//
// What cannot be seen: a tool that switches tracing_on off and on again,
// or swaps the snapshot buffer twice, between two checks (every 100 ms,
// and at every Flush) leaves no counter behind. Start refuses while
// another tool uses ftrace; a tool that starts later finds current_tracer
// set to blk.
//
// Several Tracers in one process share one ftrace session (one tracer,
// one ring, one reader per CPU dispatching events by disk); the first
// Start sets it up, the last Stop restores the settings.
type Tracer struct {
	set    *Set
	device string
	source Source
	src    source

	mu      sync.Mutex
	stopped bool
	// atStop is the set's Complete when Stop had drained the kernel's
	// buffers, before it marked the set stopped; valid once drained.
	atStop struct {
		drained  bool
		complete bool
		why      string
	}
}

// source is what the Linux sources implement.
type source interface {
	flush(ctx context.Context) error
	stop() error
}

// Set returns the set the Tracer records into.
func (t *Tracer) Set() *Set { return t.set }

// Source returns the source in use, Classic or Ftrace.
func (t *Tracer) Source() Source { return t.source }

// Flush returns when every write that completed before the call is in the
// set (see the type's documentation). It fails when ctx ends first or the
// Tracer was stopped.
func (t *Tracer) Flush(ctx context.Context) error {
	t.mu.Lock()
	stopped := t.stopped
	t.mu.Unlock()
	if stopped {
		return ErrStopped
	}
	return t.src.flush(ctx)
}

// Cut flushes and then closes the set's open epoch, returning its number:
// every write completed before the call is in that epoch or an earlier one.
// Call it at the consistency point (filesystem frozen, BLKFLSBUF done).
func (t *Tracer) Cut(ctx context.Context) (uint64, error) {
	if err := t.Flush(ctx); err != nil {
		return 0, err
	}
	return t.set.Cut(), nil
}

// Stop stops tracing, reads what is left in the kernel's buffers, and
// restores every tracing setting Start changed. The set remains usable,
// but it is marked incomplete: writes after Stop are not seen. Stop is
// idempotent.
func (t *Tracer) Stop() error {
	t.mu.Lock()
	if t.stopped {
		t.mu.Unlock()
		return nil
	}
	t.stopped = true
	t.mu.Unlock()
	err := t.src.stop()
	complete, why := t.set.Complete()
	t.mu.Lock()
	t.atStop.drained, t.atStop.complete, t.atStop.why = true, complete, why
	t.mu.Unlock()
	t.set.MarkIncomplete("tracing of " + t.device + " stopped")
	return err
}

// CompleteAtStop reports what Set().Complete() reported when Stop had
// read the kernel's buffers for the last time, before Stop marked the set
// incomplete for the writes it no longer sees: a loss that Stop's last
// drain found (it checks the loss counters and settings once more) shows
// here, and the stop itself does not. Until Stop has drained, it reports
// Set().Complete().
//
// A caller that saves the set to continue tracking after a restart (see
// Options.Set) and vouches for the time in between decides with it
// whether the saved set is complete: Set().Complete() read before Stop
// misses what the last drain finds.
func (t *Tracer) CompleteAtStop() (bool, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.atStop.drained {
		return t.set.Complete()
	}
	return t.atStop.complete, t.atStop.why
}

// apply records one decoded event. partStart is the partition's first
// byte on the whole disk.
func apply(s *Set, r Record, partStart int64) {
	switch c, off, l := Classify(r); c {
	case RangeChanged:
		s.Add(off-partStart, l)
	case UnknownChange:
		s.MarkIncomplete(fmt.Sprintf("write of unknown range (action %#x)", r.Action))
	}
}
