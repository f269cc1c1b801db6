package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/blockimage/blockimage/examples/linuxagent/internal/agentapi"
	"github.com/blockimage/blockimage/examples/linuxagent/internal/engine"
	"github.com/blockimage/blockimage/fsparse"
)

// Backup describes one backup to run.
type Backup struct {
	Request agentapi.BackupRequest
	// Changes is the daemon's change log of the device, kept since the
	// last backup. Nil makes the backup start a tracer of its own (or
	// none, when the device is an image file or tracing is unavailable).
	Changes engine.ChangeLog
	// NoBaseline, when not empty, says why Changes cannot drive an
	// incremental backup to this target; the incremental then falls back
	// to a diff and reports the reason.
	NoBaseline string
	// Progress, if set, receives the backup's progress.
	Progress func(agentapi.Progress)
	// Notify, if set, receives the notes as they arise.
	Notify func(string)
	// FreezeDeadline bounds each freeze: past it the filesystem is thawed
	// and the backup fails as not consistent. Zero: package blockdev's
	// default (10 s), or DefaultSingleFreezeDeadline for a copy made
	// inside a single freeze.
	FreezeDeadline time.Duration
	// Engine tunes the copy loop; RateLimit and Progress come from the
	// request and the field above.
	Engine engine.Options

	// atFreeze runs inside the consistency sequence before the frozen
	// copy: the tests record the device's content at the freeze point.
	atFreeze func(ctx context.Context) error
}

// DefaultFreezeTarget is how long the agent aims to keep a filesystem
// frozen: it keeps copying live until the rest fits in it at the speed of
// the last pass (see engine.Options.FreezeTarget), well inside package
// blockdev's 10-second deadline.
const DefaultFreezeTarget = time.Second

// DefaultSingleFreezeDeadline bounds the freeze of a mounted device copied
// without a tracer, which lasts the whole copy.
const DefaultSingleFreezeDeadline = 10 * time.Minute

// Run performs the backup b on platform p.
//
// A full backup copies the blocks the filesystem uses (all blocks when
// the filesystem is unknown or its metadata unreadable), a diff the in-use
// blocks that differ from the target, an incremental what the change log
// holds. All converge on the change log and end inside the consistency
// sequence. Without a tracer, an unmounted device or an image file is
// copied as it is, and a mounted device inside a single freeze.
func (p *Platform) Run(ctx context.Context, b Backup) (res agentapi.Result, err error) {
	req := b.Request
	if req.Mode == "" {
		req.Mode = agentapi.Full
	}
	if !req.Mode.Valid() {
		return res, fmt.Errorf("linuxagent: unknown mode %q", req.Mode)
	}
	res.Mode = req.Mode
	note := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		res.Notes = append(res.Notes, msg)
		if b.Notify != nil {
			b.Notify(msg)
		}
	}
	progress := func(pr agentapi.Progress) {
		if b.Progress != nil {
			b.Progress(pr)
		}
	}

	dev, err := p.Open(req.Device, false)
	if err != nil {
		return res, fmt.Errorf("linuxagent: opening %s: %w", req.Device, err)
	}
	defer dev.Close()
	size := dev.Size()
	image := isRegularFile(req.Device)
	mounted := false
	if !image {
		if p.Mounts == nil {
			return res, fmt.Errorf("%w: finding the mounts of %s needs package blockdev", ErrUnavailable, req.Device)
		}
		ms, err := p.Mounts(req.Device)
		if err != nil {
			return res, fmt.Errorf("linuxagent: mounts of %s: %w", req.Device, err)
		}
		mounted = len(ms) > 0
	} else if p.Mounts != nil {
		// An image behind a mounted loop device changes under the copy
		// and cannot be frozen as a file: the loop device can.
		for _, loop := range loopDevicesOf(req.Device) {
			if ms, err := p.Mounts(loop); err == nil && len(ms) > 0 {
				return res, fmt.Errorf("linuxagent: %s backs %s, which is mounted on %s: back up %s instead, so that it is frozen", req.Device, loop, ms[0].MountPoint, loop)
			}
		}
	}
	if !IsNBDURI(req.Target) {
		if err := checkTargetOutside(req.Target, req.Device); err != nil {
			return res, err
		}
	}

	if res.Mode == agentapi.Incremental {
		why := b.NoBaseline
		switch {
		case b.Changes == nil:
			why = "the device is not tracked by the daemon"
		case why == "":
			if ok, reason := b.Changes.Complete(); !ok {
				why = "tracking lost events: " + reason
			}
		}
		if why != "" {
			res.Mode, res.FallbackReason = agentapi.Diff, why
			note("incremental not possible (%s): running a diff backup instead", why)
		}
	}

	// The change log must record before the metadata is read.
	log, traced, singleFreeze := b.Changes, b.Changes != nil, false
	if log == nil {
		switch tr, err := p.startTracer(ctx, req.Device, image); {
		case image:
			log = &quietLog{}
			note("%s is an image file: it is copied as it is and must not change during the backup", req.Device)
		case err != nil && mounted:
			log, singleFreeze = &quietLog{}, true
			note("tracing unavailable (%v): mapping and copying inside a single freeze", err)
		case err != nil:
			log = &quietLog{}
			note("tracing unavailable (%v): %s is not mounted and is copied as it is", err, req.Device)
		default:
			defer tr.Stop()
			log, traced = tr, true
		}
	}

	target, err := p.OpenTarget(ctx, req.Target, dev, res.Mode == agentapi.Diff)
	if err != nil {
		return res, fmt.Errorf("linuxagent: opening target %s: %w", req.Target, err)
	}
	defer func() {
		if cerr := target.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("linuxagent: closing target: %w", cerr)
		}
	}()
	if target.Size() < size {
		return res, fmt.Errorf("linuxagent: target %s holds %d bytes, the device %d", req.Target, target.Size(), size)
	}
	counting := &countingSink{t: target}
	var sink engine.Sink = counting
	if res.Mode == agentapi.Diff {
		sink = &diffSink{next: counting, t: target}
	}

	mapInUse := func(ctx context.Context) ([]engine.Extent, error) {
		if res.Mode == agentapi.Incremental {
			return nil, nil
		}
		progress(agentapi.Progress{Phase: "mapping"})
		info, es, err := fsparse.InUse(ctx, dev, size)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			note("cannot map the in-use blocks (%v): copying all %d bytes", err, size)
			es = fsparse.AllBlocks(size)
		} else {
			res.Filesystem = info.Filesystem
		}
		out := make([]engine.Extent, len(es))
		for i, e := range es {
			out[i] = engine.Extent{Offset: e.Offset, Length: e.Length}
			res.BytesInUse += e.Length
		}
		return out, nil
	}

	o := b.Engine
	if o.FreezeTarget == 0 {
		o.FreezeTarget = DefaultFreezeTarget
	}
	o.RateLimit = req.RateLimit
	o.Progress = func(ep engine.Progress) {
		progress(agentapi.Progress{Phase: ep.Phase, Pass: ep.Pass, BytesTotal: ep.BytesTotal, BytesDone: ep.BytesDone, BytesSent: counting.sent.Load()})
	}
	hook := func(ctx context.Context) error {
		if b.atFreeze != nil {
			return b.atFreeze(ctx)
		}
		return nil
	}
	var flushTracer func(context.Context) error
	if traced {
		flushTracer = log.Flush
	}
	sequence := func(ctx context.Context, critical func(context.Context) error) (FreezeReport, error) {
		if image {
			return FreezeReport{}, critical(ctx)
		}
		if p.Sequence == nil {
			return FreezeReport{}, fmt.Errorf("%w: the consistency sequence needs package blockdev", ErrUnavailable)
		}
		deadline := b.FreezeDeadline
		if singleFreeze && deadline == 0 {
			deadline = DefaultSingleFreezeDeadline
		}
		return p.Sequence(ctx, req.Device, deadline, flushTracer, critical)
	}

	var er engine.Result
	var rep FreezeReport
	var mapped []engine.Extent
	mapDone := false
	if mounted && !singleFreeze && res.Mode != agentapi.Incremental {
		// A live filesystem's allocation maps on disk lag its journal
		// (fsparse.ErrNeedsRecovery); the freeze checkpoints the journal,
		// so the map is read inside one. The tracer already runs, so
		// what is written after the thaw is recorded.
		var initial []engine.Extent
		mrep, err := sequence(ctx, func(ctx context.Context) error {
			var err error
			initial, err = mapInUse(ctx)
			return err
		})
		res.MapFreezeWindow = mrep.FrozenFor
		if err != nil {
			return res, fmt.Errorf("linuxagent: mapping the in-use blocks inside a freeze: %w", err)
		}
		mapped = initial
		mapDone = true
	}
	if singleFreeze {
		rep, err = sequence(ctx, func(ctx context.Context) error {
			if err := hook(ctx); err != nil {
				return err
			}
			initial, err := mapInUse(ctx)
			if err != nil {
				return err
			}
			er, err = engine.Run(ctx, dev, sink, log, runDirectly, initial, o)
			return err
		})
		er.FreezeWindow = rep.FrozenFor
	} else {
		initial, merr := mapped, error(nil)
		if !mapDone {
			initial, merr = mapInUse(ctx)
		}
		if merr != nil {
			return res, merr
		}
		er, err = engine.Run(ctx, dev, sink, log, func(ctx context.Context, critical func(context.Context) error) (time.Duration, error) {
			rep, err = sequence(ctx, func(ctx context.Context) error {
				if err := hook(ctx); err != nil {
					return err
				}
				return critical(ctx)
			})
			return rep.FrozenFor, err
		}, initial, o)
	}
	res.Passes, res.Converged, res.FreezeWindow = er.Passes, er.Converged, er.FreezeWindow
	res.Frozen = rep.Frozen
	res.BytesSent = counting.sent.Load()
	if err != nil {
		return res, err
	}
	res.Consistent = rep.Frozen || !mounted
	if !er.Converged {
		note("the writes did not converge after %d live passes: froze anyway", er.Passes-1)
	}
	progress(agentapi.Progress{Phase: "done", Pass: er.Passes, BytesSent: res.BytesSent})
	return res, nil
}

// startTracer starts a tracer for a backup that has none from the daemon.
func (p *Platform) startTracer(ctx context.Context, device string, image bool) (Tracer, error) {
	if image {
		return nil, errors.New("an image file cannot be traced")
	}
	if p.StartTracer == nil {
		return nil, fmt.Errorf("%w: package tracer", ErrUnavailable)
	}
	return p.StartTracer(ctx, device)
}

// runDirectly is the freeze of a copy that already runs inside one.
func runDirectly(ctx context.Context, critical func(context.Context) error) (time.Duration, error) {
	return 0, critical(ctx)
}
