// Package tracer records which blocks of a block device change, so that an
// incremental backup copies only those, and says loudly when it may have
// missed any.
//
// [Start] traces a whole disk or a partition through the kernel's block
// trace points, with one of two sources (see [Source]): classic blktrace
// (BLKTRACESETUP and the per-CPU relay files under debugfs) or the ftrace
// "blk" tracer (per-CPU trace_pipe_raw ring-buffer pages). Auto tries the
// first and falls back to the second when the relay files cannot be opened,
// as on kernels with a locked-down debugfs. Every write, discard, secure
// erase and write-zeroes request is recorded into a [Set], a changed-block
// bitmap with epochs, by the rules of [Classify]; reads are ignored.
//
// [Tracer.Flush] is the barrier a backup sequencer needs after freezing the
// filesystem and BLKFLSBUF: when it returns, every write completed before
// the call is in the set; [Tracer.Cut] flushes and closes the epoch. The
// design is explained on [Tracer].
//
// The decoders are separate from the OS access and work on bytes:
// [DecodeRecord] for the relay stream (blk_io_trace version 7 and the 64-byte
// blk_io_trace2 version 8, dispatched on the magic's version byte),
// [DecodeFtraceRecord] for the blk tracer's ring events, and [ParsePage]
// for ring-buffer pages. They are fuzzed; bad input gives an error wrapping
// [ErrBadRecord], never a panic or an allocation sized by the input.
//
// The kernel formats are those of include/uapi/linux/blktrace_api.h,
// kernel/trace/blktrace.c and kernel/trace/ring_buffer.c; the page and event
// headers are described by tracefs's events/header_page and
// events/header_event. Linux 6.18, where this was developed, writes
// version 7 records into the ftrace ring (see testdata/).
//
// Only one program can use the ftrace blk tracer at a time: Start refuses
// with [ErrBusy] when another tool has a tracer selected, events enabled or
// tracing paused, and [Tracer.Stop] restores what Start changed. Within a
// program, any number of Tracers (several disks, or partitions of one disk)
// share the ftrace session; the last Stop restores the settings.
package tracer
