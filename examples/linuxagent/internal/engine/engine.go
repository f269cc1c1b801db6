// Package engine is linuxagent's converging copy loop, the algorithm of the
// Linux Agent design: copy a set of extents while the filesystem stays live,
// re-copy what the change tracer saw written meanwhile until little is
// left, then freeze, copy the rest inside the freeze and thaw.
//
// The engine knows the tracer, the target and the freeze only through the
// small interfaces below, so that its correctness (no write is lost, no
// extent is forgotten before the target has it durably) is tested on its
// own; the daemon plugs in tracer/changeset, nbd and blockdev.
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// An Extent is a byte range of the device.
type Extent struct {
	Offset, Length int64
}

// ChangeLog is the tracer's record of one device's writes, grouped in
// epochs. Extents leave it only through Acknowledge, once the target holds
// them durably, so that a failed pass loses nothing.
type ChangeLog interface {
	// Flush returns once every write that completed before the call is
	// recorded (the tracer's barrier).
	Flush(ctx context.Context) error
	// Cut closes the current epoch and returns its number; writes that
	// are recorded later belong to later epochs.
	Cut() uint64
	// Pending returns the unacknowledged extents of epochs up to upTo.
	Pending(upTo uint64) []Extent
	// Acknowledge removes extents from epochs up to upTo; the same blocks
	// written again in a later epoch stay pending.
	Acknowledge(extents []Extent, upTo uint64)
	// Complete reports false, with the reason, when events may have been
	// lost: the log then cannot drive an incremental backup.
	Complete() (bool, string)
}

// Sink is the backup target.
type Sink interface {
	// WriteAt writes p at off. It may return before the data is durable.
	WriteAt(ctx context.Context, p []byte, off int64) error
	// Flush returns once every write that returned before the call is
	// durable on the target.
	Flush(ctx context.Context) error
}

// FreezeFunc runs critical inside the consistency sequence (freeze, flush
// device buffers, flush the change log, critical, thaw) and returns how
// long the filesystem stayed frozen. For an unmounted device it runs
// critical after flushing, without a freeze.
type FreezeFunc func(ctx context.Context, critical func(ctx context.Context) error) (time.Duration, error)

// Options shape a run. The zero value of each field is replaced by its
// default in [Run].
type Options struct {
	// ConvergeBytes: once a pass would copy no more than this, the next
	// pass runs frozen. Default 64 MiB, roughly a second of copying on a
	// slow link, which bounds the freeze window.
	ConvergeBytes int64
	// FreezeTarget, when positive, is how long the frozen pass should
	// take: the convergence threshold shrinks below ConvergeBytes to what
	// the last live pass copied in that time, so that a slow target does
	// not stretch the freeze. 0 disables it.
	FreezeTarget time.Duration
	// MaxLivePasses bounds the passes made while the filesystem is live
	// (the first copy included); when writes do not converge the agent
	// freezes anyway after them and reports it. Default 8.
	MaxLivePasses int
	// ChunkSize is the size of each read and write. Default 1 MiB.
	ChunkSize int
	// RateLimit caps reads from the device in bytes per second so that
	// production workloads keep their I/O; 0 means no limit. The frozen
	// pass is not throttled, since every writer waits for it.
	RateLimit int64
	// Progress, if set, is called after every chunk and phase change.
	Progress func(Progress)
}

// Progress is the engine's report of where it is.
type Progress struct {
	Phase      string // "copying", "converging", "frozen", "done"
	Pass       int
	BytesTotal int64 // of this pass
	BytesDone  int64 // of this pass
	BytesSent  int64 // all passes
}

// Result is what a run did.
type Result struct {
	// Passes counts every pass, the frozen one included.
	Passes int
	// Converged is false when the live passes ran out before the pending
	// set shrank below ConvergeBytes.
	Converged bool
	// FreezeWindow is how long the filesystem stayed frozen.
	FreezeWindow time.Duration
	// BytesSent counts bytes written to the sink.
	BytesSent int64
}

// ErrIncomplete reports a change log that lost events during the run: the
// image may miss writes, and the caller must fall back to a diff backup.
var ErrIncomplete = errors.New("engine: the change log lost events during the backup")

// Run copies initial (the in-use extents for a full backup, nothing for an
// incremental one, whose work is all in the change log), then converges on
// the change log and finishes inside freeze. src is the device.
func Run(ctx context.Context, src io.ReaderAt, sink Sink, log ChangeLog, freeze FreezeFunc, initial []Extent, o Options) (Result, error) {
	o.setDefaults()
	r := &runner{src: src, sink: sink, o: o, buf: make([]byte, o.ChunkSize), started: time.Now()}
	var res Result

	// Every write recorded before this cut is already covered by the
	// initial copy or is pending from an earlier backup; both are copied.
	epoch := log.Cut()
	work := mergeExtents(append(append([]Extent(nil), initial...), log.Pending(epoch)...))
	for pass := 1; ; pass++ {
		res.Passes = pass
		phase := "converging"
		if pass == 1 {
			phase = "copying"
		}
		passStart := time.Now()
		if err := r.copyAll(ctx, phase, pass, work); err != nil {
			return res, err
		}
		if err := sink.Flush(ctx); err != nil {
			return res, fmt.Errorf("engine: flushing the target after pass %d: %w", pass, err)
		}
		converge := o.ConvergeBytes
		if elapsed := time.Since(passStart); o.FreezeTarget > 0 && elapsed > 0 && total(work) > 0 {
			rate := float64(total(work)) / elapsed.Seconds()
			converge = min(converge, max(int64(rate*o.FreezeTarget.Seconds()), int64(o.ChunkSize)))
		}
		log.Acknowledge(work, epoch)
		if ok, why := log.Complete(); !ok {
			return res, fmt.Errorf("%w: %s", ErrIncomplete, why)
		}
		if err := log.Flush(ctx); err != nil {
			return res, fmt.Errorf("engine: flushing the change log: %w", err)
		}
		epoch = log.Cut()
		work = mergeExtents(log.Pending(epoch))
		if total(work) <= converge {
			res.Converged = true
			break
		}
		if pass >= o.MaxLivePasses {
			break
		}
	}

	res.Passes++
	frozenPass := res.Passes
	window, err := freeze(ctx, func(ctx context.Context) error {
		// The sequence flushed the change log after the freeze, so every
		// write before the freeze is recorded; none can follow it.
		epoch = log.Cut()
		work = mergeExtents(log.Pending(epoch))
		if err := r.copyAll(ctx, "frozen", frozenPass, work); err != nil {
			return err
		}
		return sink.Flush(ctx)
	})
	res.FreezeWindow = window
	res.BytesSent = r.sent
	if err != nil {
		return res, fmt.Errorf("engine: frozen pass: %w", err)
	}
	log.Acknowledge(work, epoch)
	if ok, why := log.Complete(); !ok {
		return res, fmt.Errorf("%w: %s", ErrIncomplete, why)
	}
	r.report("done", frozenPass, 0, 0)
	return res, nil
}

func (o *Options) setDefaults() {
	if o.ConvergeBytes <= 0 {
		o.ConvergeBytes = 64 << 20
	}
	if o.MaxLivePasses <= 0 {
		o.MaxLivePasses = 8
	}
	if o.ChunkSize <= 0 {
		o.ChunkSize = 1 << 20
	}
}

type runner struct {
	src     io.ReaderAt
	sink    Sink
	o       Options
	buf     []byte
	sent    int64
	started time.Time
	read    int64 // bytes read, for the rate limit
}

func (r *runner) copyAll(ctx context.Context, phase string, pass int, work []Extent) error {
	todo, done := total(work), int64(0)
	r.report(phase, pass, todo, done)
	for _, e := range work {
		for off := e.Offset; off < e.Offset+e.Length; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(int64(len(r.buf)), e.Offset+e.Length-off)
			got, err := r.src.ReadAt(r.buf[:n], off)
			if err != nil && !(errors.Is(err, io.EOF) && int64(got) == n) {
				return fmt.Errorf("engine: reading the device at %d: %w", off, err)
			}
			if err := r.sink.WriteAt(ctx, r.buf[:n], off); err != nil {
				return fmt.Errorf("engine: writing the target at %d: %w", off, err)
			}
			off += n
			done += n
			r.sent += n
			r.read += n
			r.report(phase, pass, todo, done)
			if phase == "frozen" {
				// Writers wait while frozen: the rate limit protects
				// them from the copy's I/O, not the other way round.
				continue
			}
			if err := r.throttle(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

// throttle sleeps until the average read rate since the start is back
// under the limit.
func (r *runner) throttle(ctx context.Context) error {
	if r.o.RateLimit <= 0 {
		return nil
	}
	due := r.started.Add(time.Duration(float64(r.read) / float64(r.o.RateLimit) * float64(time.Second)))
	wait := time.Until(due)
	if wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (r *runner) report(phase string, pass int, todo, done int64) {
	if r.o.Progress != nil {
		r.o.Progress(Progress{Phase: phase, Pass: pass, BytesTotal: todo, BytesDone: done, BytesSent: r.sent})
	}
}

func total(es []Extent) int64 {
	var n int64
	for _, e := range es {
		n += e.Length
	}
	return n
}
