package tracer

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// findTracefs returns the tracefs directory, mounting tracefs when it is
// not mounted anywhere we look.
func findTracefs() (string, error) {
	for _, dir := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
		if _, err := os.Stat(filepath.Join(dir, "current_tracer")); err == nil {
			return dir, nil
		}
	}
	dir := "/sys/kernel/tracing"
	if err := unix.Mount("tracefs", dir, "tracefs", 0, ""); err != nil {
		return "", fmt.Errorf("tracer: mount tracefs on %s: %w: %w", dir, err, ErrUnavailable)
	}
	if _, err := os.Stat(filepath.Join(dir, "current_tracer")); err != nil {
		return "", fmt.Errorf("tracer: tracefs has no current_tracer: %w", ErrUnavailable)
	}
	return dir, nil
}

// ftraceSource reads the blk tracer's per-CPU ring buffers.
type ftraceSource struct {
	dir       string // tracefs
	dev       *blockDevice
	set       *Set
	readers   []*cpuReader
	pageSize  int
	nonBlk    map[uint16]bool // ids of ftrace's own event types (print, bprint...)
	markers   *markers        // the flush barrier's trace_marker writes; nil: drain only
	blkType   int             // learnt from the first blk event, -1 before
	blkTypeMu sync.Mutex

	// restore; act_mask needs none: the kernel forgets it with the
	// per-disk trace when enable goes back to 0.
	oldBufferKB string

	statsMu   sync.Mutex
	baseline  map[int]lossCounters
	lastCheck time.Time
	interval  time.Duration
	stopOnce  sync.Once
}

type lossCounters struct{ overrun, commitOverrun, dropped uint64 }

func (f *ftraceSource) path(name ...string) string {
	return filepath.Join(append([]string{f.dir}, name...)...)
}

func startFtrace(ctx context.Context, d *blockDevice, set *Set, o Options) (_ *ftraceSource, err error) {
	dir, err := findTracefs()
	if err != nil {
		return nil, err
	}
	f := &ftraceSource{dir: dir, dev: d, set: set, blkType: -1, interval: o.PollInterval}
	traceDir := filepath.Join(d.diskSys, "trace")
	if _, err := os.Stat(filepath.Join(traceDir, "enable")); err != nil {
		return nil, fmt.Errorf("tracer: %s has no blktrace sysfs controls: %w", d.disk, ErrUnavailable)
	}
	if err := f.checkUnused(traceDir); err != nil {
		return nil, err
	}
	if f.pageSize, err = f.subbufSize(); err != nil {
		return nil, err
	}
	if f.nonBlk, err = f.ftraceEventIDs(); err != nil {
		return nil, err
	}
	// Without trace_marker (the markers option off), Flush falls back to
	// draining until EAGAIN; see Tracer.
	if m, err := openMarkers(dir); err == nil {
		f.markers = m
	}
	// From here on, every change is undone on failure.
	defer func() {
		if err != nil {
			f.restore()
		}
	}()
	if o.BufferSizeKB > 0 {
		if f.oldBufferKB, err = f.bufferSizeKB(); err != nil {
			return nil, err
		}
		if err := writeFile(f.path("buffer_size_kb"), strconv.Itoa(o.BufferSizeKB)); err != nil {
			return nil, fmt.Errorf("tracer: %w", err)
		}
	}
	if err := writeFile(f.path("current_tracer"), "blk"); err != nil {
		return nil, fmt.Errorf("tracer: select the blk tracer: %w", err)
	}
	// Only requests that change data, or may: the kernel keeps an event
	// when any of its categories is in the mask, and every write, discard,
	// write-zeroes or passthrough write has the write category.
	if err := writeFile(filepath.Join(traceDir, "act_mask"), "write"); err != nil {
		return nil, fmt.Errorf("tracer: %w", err)
	}
	// Empty the ring so that its counters start from zero.
	if err := writeFile(f.path("trace"), ""); err != nil {
		return nil, fmt.Errorf("tracer: reset the ring buffer: %w", err)
	}
	cpus, err := filepath.Glob(f.path("per_cpu", "cpu*"))
	if err != nil || len(cpus) == 0 {
		return nil, fmt.Errorf("tracer: no per-CPU buffers under %s: %w", f.dir, ErrUnavailable)
	}
	f.baseline = make(map[int]lossCounters)
	for _, c := range cpus {
		cpu, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(c), "cpu"))
		if err != nil {
			continue
		}
		lc, err := readLossCounters(filepath.Join(c, "stats"))
		if err != nil {
			return nil, fmt.Errorf("tracer: %w", err)
		}
		f.baseline[cpu] = lc
		fd, err := unix.Open(filepath.Join(c, "trace_pipe_raw"), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("tracer: open %s: %w", filepath.Join(c, "trace_pipe_raw"), err)
		}
		page := make([]byte, f.pageSize)
		r, err := newCPUReader(cpu, fd, func() error { return f.drain(cpu, fd, page) })
		if err != nil {
			unix.Close(fd)
			return nil, err
		}
		f.readers = append(f.readers, r)
	}
	if err := writeFile(filepath.Join(traceDir, "enable"), "1"); err != nil {
		return nil, fmt.Errorf("tracer: enable tracing of %s: %w", d.disk, err)
	}
	for _, r := range f.readers {
		go r.run(f.interval, f.checkLoss)
	}
	return f, nil
}

// checkUnused refuses when someone else uses ftrace: another tracer, event
// tracing into the global buffer, tracing switched off, or this disk's
// blktrace already enabled.
func (f *ftraceSource) checkUnused(traceDir string) error {
	cur, err := readSysString(f.path("current_tracer"))
	if err != nil {
		return fmt.Errorf("tracer: %w", err)
	}
	if cur != "nop" {
		return fmt.Errorf("tracer: current_tracer is %q, not nop (if no tool is tracing, reset it with 'echo nop > %s'): %w",
			cur, f.path("current_tracer"), ErrBusy)
	}
	on, err := readSysString(f.path("tracing_on"))
	if err != nil {
		return fmt.Errorf("tracer: %w", err)
	}
	if on != "1" {
		return fmt.Errorf("tracer: tracing_on is %s: another tool has paused tracing: %w", on, ErrBusy)
	}
	if ev, err := readSysString(f.path("set_event")); err == nil && ev != "" {
		first, _, _ := strings.Cut(ev, "\n")
		return fmt.Errorf("tracer: events are enabled in the global trace buffer (%s...): %w", first, ErrBusy)
	}
	if en, err := readSysString(filepath.Join(traceDir, "enable")); err != nil || en != "0" {
		return fmt.Errorf("tracer: blktrace of %s is already enabled (%q, %v): %w", f.dev.disk, en, err, ErrBusy)
	}
	return nil
}

func (f *ftraceSource) bufferSizeKB() (string, error) {
	s, err := readSysString(f.path("buffer_size_kb"))
	if err != nil {
		return "", fmt.Errorf("tracer: %w", err)
	}
	// "7 (expanded: 1408)": the boot-time buffer is not allocated yet;
	// selecting any tracer expands it to 1408, the size to restore.
	if _, exp, ok := strings.Cut(s, "(expanded: "); ok {
		return strings.TrimSuffix(exp, ")"), nil
	}
	return s, nil
}

// subbufSize is the size of the pages trace_pipe_raw returns.
func (f *ftraceSource) subbufSize() (int, error) {
	if kb, err := readSysInt(f.path("buffer_subbuf_size_kb")); err == nil && kb > 0 && kb <= 1<<20 {
		return int(kb) << 10, nil
	}
	return os.Getpagesize(), nil
}

// ftraceEventIDs returns the type ids of ftrace's own events (print,
// bprint, function...): any event of another type in the ring is the blk
// tracer's.
func (f *ftraceSource) ftraceEventIDs() (map[uint16]bool, error) {
	formats, _ := filepath.Glob(f.path("events", "ftrace", "*", "format"))
	ids := make(map[uint16]bool)
	for _, p := range formats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "ID: "); ok {
				if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 16); err == nil {
					ids[uint16(n)] = true
				}
			}
		}
	}
	return ids, nil
}

// drain reads pages until the ring is empty.
func (f *ftraceSource) drain(cpu, fd int, page []byte) error {
	for {
		n, empty, err := readRing(fd, page)
		if err != nil {
			f.set.MarkIncomplete(fmt.Sprintf("reading the ring buffer: %v", err))
			return err
		}
		if empty {
			return nil
		}
		clear(page[n:])
		f.parse(cpu, page[:n])
	}
}

func (f *ftraceSource) parse(cpu int, page []byte) {
	info, err := ParsePage(page, func(_ uint64, data []byte) error {
		if len(data) < 2 {
			return fmt.Errorf("%w: event of %d bytes", ErrBadRecord, len(data))
		}
		typ := binary.LittleEndian.Uint16(data)
		if f.markers != nil && typ == f.markers.printType {
			f.markers.observe(cpu, data)
			return nil
		}
		if f.nonBlk[typ] {
			return nil // a trace_marker write or a kernel trace_printk
		}
		r, err := DecodeFtraceRecord(data)
		if err != nil {
			return fmt.Errorf("event type %d: %w", typ, err)
		}
		f.blkTypeMu.Lock()
		if f.blkType < 0 {
			f.blkType = int(typ)
		}
		known := f.blkType == int(typ)
		f.blkTypeMu.Unlock()
		if !known {
			return fmt.Errorf("%w: unexpected event type %d in the ring", ErrBadRecord, typ)
		}
		if r.Device != f.dev.diskDev {
			return nil
		}
		apply(f.set, r, f.dev.partStart)
		return nil
	})
	if err != nil {
		f.set.MarkIncomplete(fmt.Sprintf("unreadable ring-buffer page: %v", err))
	}
	switch {
	case info.Missed && info.MissedCount > 0:
		f.set.MarkIncomplete(fmt.Sprintf("ring buffer lost %d events", info.MissedCount))
	case info.Missed:
		f.set.MarkIncomplete("ring buffer lost events")
	}
}

// checkLoss compares the per-CPU loss counters with their values at Start
// and checks that nobody changed the tracing settings; it runs after
// drains, at most once per poll interval.
func (f *ftraceSource) checkLoss() {
	f.statsMu.Lock()
	defer f.statsMu.Unlock()
	if time.Since(f.lastCheck) < f.interval {
		return
	}
	f.lastCheck = time.Now()
	f.checkLossLocked()
}

func (f *ftraceSource) checkLossLocked() {
	for cpu, base := range f.baseline {
		lc, err := readLossCounters(f.path("per_cpu", fmt.Sprintf("cpu%d", cpu), "stats"))
		if err != nil {
			f.set.MarkIncomplete(fmt.Sprintf("cpu%d loss counters unreadable: %v", cpu, err))
			continue
		}
		if lc.overrun > base.overrun || lc.commitOverrun > base.commitOverrun || lc.dropped > base.dropped {
			f.set.MarkIncomplete(fmt.Sprintf("cpu%d ring buffer overrun: %d overwritten, %d commit overruns, %d dropped",
				cpu, lc.overrun-base.overrun, lc.commitOverrun-base.commitOverrun, lc.dropped-base.dropped))
			f.baseline[cpu] = lc
		}
	}
	if cur, err := readSysString(f.path("current_tracer")); err != nil || cur != "blk" {
		f.set.MarkIncomplete(fmt.Sprintf("current_tracer changed to %q by someone else", cur))
	}
	if on, err := readSysString(f.path("tracing_on")); err != nil || on != "1" {
		f.set.MarkIncomplete("tracing_on switched off by someone else")
	}
	if en, err := readSysString(filepath.Join(f.dev.diskSys, "trace", "enable")); err != nil || en != "1" {
		f.set.MarkIncomplete("blktrace of " + f.dev.disk + " disabled by someone else")
	}
}

func readLossCounters(path string) (lossCounters, error) {
	fh, err := os.Open(path)
	if err != nil {
		return lossCounters{}, err
	}
	defer fh.Close()
	var lc lossCounters
	found := 0
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "overrun":
			lc.overrun, found = n, found+1
		case "commit overrun":
			lc.commitOverrun, found = n, found+1
		case "dropped events":
			lc.dropped, found = n, found+1
		}
	}
	if err := sc.Err(); err != nil {
		return lc, err
	}
	if found < 2 {
		return lc, fmt.Errorf("%s: no overrun counters", path)
	}
	return lc, nil
}

func (f *ftraceSource) flush(ctx context.Context) error {
	var err error
	if f.markers != nil {
		err = f.markers.barrier(ctx, f.readers, 10*time.Second)
	} else {
		err = flushAll(ctx, f.readers)
	}
	f.statsMu.Lock()
	f.checkLossLocked()
	f.lastCheck = time.Now()
	f.statsMu.Unlock()
	return err
}

// stop disables tracing of the disk, drains what is left, and restores the
// settings.
func (f *ftraceSource) stop() error {
	var errs []error
	f.stopOnce.Do(func() {
		if err := writeFile(filepath.Join(f.dev.diskSys, "trace", "enable"), "0"); err != nil {
			errs = append(errs, err)
		}
		stopAll(f.readers)
		f.statsMu.Lock()
		f.checkLossLocked()
		f.statsMu.Unlock()
		errs = append(errs, f.restore())
	})
	return errors.Join(errs...)
}

// restore undoes what startFtrace changed. current_tracer was nop: we
// refuse to start otherwise.
func (f *ftraceSource) restore() error {
	var errs []error
	traceDir := filepath.Join(f.dev.diskSys, "trace")
	if en, _ := readSysString(filepath.Join(traceDir, "enable")); en == "1" {
		errs = append(errs, writeFile(filepath.Join(traceDir, "enable"), "0"))
	}
	if cur, _ := readSysString(f.path("current_tracer")); cur == "blk" {
		errs = append(errs, writeFile(f.path("current_tracer"), "nop"))
	}
	if f.oldBufferKB != "" {
		errs = append(errs, writeFile(f.path("buffer_size_kb"), f.oldBufferKB))
	}
	for _, r := range f.readers {
		select {
		case <-r.done:
		default:
			// Never started (Start failed): close the files here.
			unix.Close(r.fd)
			unix.Close(r.efd)
		}
	}
	if f.markers != nil {
		f.markers.close()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tracer: restoring tracing settings: %w", err)
	}
	return nil
}
