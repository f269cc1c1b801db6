package tracer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// cpuState is one CPU reader's state, touched only by its goroutine.
type cpuState struct {
	cpu       int
	fd        int
	page      []byte
	stats     *sysFile     // per_cpu/cpuN/stats
	base      lossCounters // at Start, or at the last loss reported
	events    uint64       // data events parsed
	changes   []change     // of the page being applied
	scratch   []Extent
	lastCheck time.Time
	pipe      [2]int // drainPages splices through it; -1 without
	pipeBuf   []byte
}

// A change is a classified event waiting to be applied.
type change struct {
	dev         uint32
	off, length int64
	action      uint64 // for UnknownChange; length is -1 then
}

// drain takes what mode asks for from the CPU's ring: the complete pages
// through splice (which never hands out the page being written), and, for
// drainQuiet and drainAll, the rest through read. It reports whether it
// took anything.
func (f *ftraceSession) drain(st *cpuState, mode drainMode) (took bool, err error) {
	if st.pipe[0] >= 0 {
		if took, err = f.drainPages(st); err != nil {
			return took, err
		}
		if mode == drainPages {
			return took, nil
		}
	}
	for {
		n, empty, err := readRing(st.fd, st.page, mode != drainQuiet)
		if err != nil {
			f.markAll(fmt.Sprintf("reading the ring buffer of cpu%d: %v", st.cpu, err))
			return took, err
		}
		if empty {
			return took, nil
		}
		took = true
		clear(st.page[n:])
		f.parse(st, st.page[:n])
		if mode == drainQuiet {
			// One read took what the page being written holds; more
			// reads would chase the writer.
			return took, nil
		}
	}
}

// drainPages splices the ring's complete pages into the CPU's pipe and
// parses them, until the kernel has none left (EAGAIN), and reports
// whether there was any. The kernel swaps a complete page out of the ring
// without copying it and without touching the page being written, so the
// writer on that CPU does not notice.
func (f *ftraceSession) drainPages(st *cpuState) (took bool, err error) {
	for {
		n, err := rawSpliceNonblock(st.fd, st.pipe[1], len(st.pipeBuf))
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN || err == nil && n == 0:
			return took, nil
		case err != nil:
			// Not expected from a kernel that has trace_pipe_raw; read
			// pages instead from now on.
			st.closePipe()
			return took, nil
		}
		if err := readFull(st.pipe[0], st.pipeBuf[:n]); err != nil {
			f.markAll(fmt.Sprintf("reading the ring buffer of cpu%d through a pipe: %v", st.cpu, err))
			return took, err
		}
		took = true
		for p := st.pipeBuf[:n]; len(p) > 0; {
			l := min(len(p), f.pageSize)
			f.parse(st, p[:l])
			p = p[l:]
		}
	}
}

// openPipe makes the pipe drainPages splices through, sized for
// pipePages ring pages. Without one, drains read pages instead.
func (st *cpuState) openPipe(pageSize int) {
	st.pipe = [2]int{-1, -1}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return
	}
	size := pipePages * pageSize
	if got, err := unix.FcntlInt(uintptr(p[0]), unix.F_SETPIPE_SZ, size); err == nil && got < size {
		size = got
	} else if err != nil {
		size = 16 * 4096 // the default pipe size
	}
	if size < pageSize {
		unix.Close(p[0])
		unix.Close(p[1])
		return
	}
	st.pipe = p
	st.pipeBuf = make([]byte, size/pageSize*pageSize)
}

// pipePages is how many ring pages one splice moves at most.
const pipePages = 64

func (st *cpuState) closePipe() {
	if st.pipe[0] >= 0 {
		unix.Close(st.pipe[0])
		unix.Close(st.pipe[1])
		st.pipe = [2]int{-1, -1}
	}
}

// readFull reads len(p) bytes from a pipe that holds them.
func readFull(fd int, p []byte) error {
	for len(p) > 0 {
		n, err := readNonblock(fd, p)
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("pipe holds %d bytes fewer than spliced into it", len(p))
		}
		p = p[n:]
	}
	return nil
}

// parse decodes one page and applies it: the changes are collected first
// and then added to each subscriber's set under one lock.
func (f *ftraceSession) parse(st *cpuState, page []byte) {
	st.changes = st.changes[:0]
	info, err := ParsePage(page, func(_ uint64, data []byte) error {
		if len(data) < 2 {
			return fmt.Errorf("%w: event of %d bytes", ErrBadRecord, len(data))
		}
		typ := binary.LittleEndian.Uint16(data)
		known := f.blkType.Load()
		if known != int32(typ) { // not the blk event, or not learnt yet
			if f.markers != nil && typ == f.markers.printType {
				f.markers.observe(st.cpu, data)
				return nil
			}
			if f.nonBlk[typ] {
				return nil // a trace_marker write or a kernel trace_printk
			}
		}
		r, err := DecodeFtraceRecord(data)
		if err != nil {
			return fmt.Errorf("event type %d: %w", typ, err)
		}
		if known != int32(typ) {
			if known >= 0 || !f.blkType.CompareAndSwap(-1, int32(typ)) && f.blkType.Load() != int32(typ) {
				return fmt.Errorf("%w: unexpected event type %d in the ring", ErrBadRecord, typ)
			}
		}
		switch c, off, l := Classify(r); c {
		case RangeChanged:
			st.changes = append(st.changes, change{dev: r.Device, off: off, length: l})
		case UnknownChange:
			st.changes = append(st.changes, change{dev: r.Device, length: -1, action: r.Action})
		}
		return nil
	})
	st.events += uint64(info.Events)
	f.apply(st)
	if err != nil {
		f.markAll(fmt.Sprintf("unreadable ring-buffer page: %v", err))
	}
	switch {
	case info.Missed && info.MissedCount > 0:
		f.markAll(fmt.Sprintf("ring buffer lost %d events", info.MissedCount))
	case info.Missed:
		f.markAll("ring buffer lost events")
	}
}

// apply hands the page's changes to the subscribers of their disks.
func (f *ftraceSession) apply(st *cpuState) {
	if len(st.changes) == 0 {
		return
	}
	f.subsMu.RLock()
	defer f.subsMu.RUnlock()
	for dev, subs := range f.subs {
		for _, u := range subs {
			st.scratch = st.scratch[:0]
			for _, c := range st.changes {
				switch {
				case c.dev != dev:
				case c.length < 0:
					u.set.MarkIncomplete(fmt.Sprintf("write of unknown range (action %#x)", c.action))
				default:
					st.scratch = append(st.scratch, Extent{Offset: c.off - u.dev.partStart, Length: c.length})
				}
			}
			if len(st.scratch) > 0 {
				u.set.addExtents(st.scratch)
			}
		}
	}
}

// afterDrain runs on a reader's goroutine after each drain, so every page
// the kernel handed out on this CPU has been parsed: it compares the CPU's
// counters with what we saw. Overwritten or dropped events are losses. So
// is a "read events" count other than ours: another reader of the ring
// (a trace_pipe reader consumes events) or a reset of the ring (which
// discards them). The checks run at most once per poll interval unless
// force (a flush or a stop waits). The settings are checked by the
// session, once per flush or stop, after all readers drained.
func (f *ftraceSession) afterDrain(st *cpuState, force bool) {
	now := time.Now()
	if !force && now.Sub(st.lastCheck) < f.interval {
		return
	}
	st.lastCheck = now
	lc, err := readLossCounters(st.stats)
	if err != nil {
		f.markAll(fmt.Sprintf("cpu%d loss counters unreadable: %v", st.cpu, err))
		return
	}
	b := st.base
	if lc.overrun > b.overrun || lc.commitOverrun > b.commitOverrun || lc.dropped > b.dropped {
		f.markAll(fmt.Sprintf("cpu%d ring buffer overrun: %d overwritten, %d commit overruns, %d dropped",
			st.cpu, lc.overrun-b.overrun, lc.commitOverrun-b.commitOverrun, lc.dropped-b.dropped))
	}
	if lc.read-b.read != st.events {
		f.markAll(fmt.Sprintf("cpu%d: the kernel handed out %d events, this reader parsed %d: another reader consumed events or the ring was reset",
			st.cpu, int64(lc.read-b.read), st.events))
		lc.read -= st.events // resynchronise
	} else {
		lc.read = b.read
	}
	st.base = lc
}

// checkSettings checks that nobody changed the tracing settings that
// tracing depends on: each of them stops or drops recording silently.
func (f *ftraceSession) checkSettings() {
	f.checkMu.Lock()
	defer f.checkMu.Unlock()
	f.checkQuickSettingsLocked()
	f.checkOtherSettingsLocked()
}

// checkQuickSettingsLocked checks the settings a tool may switch off and
// on again within moments: tracing_on, pause-on-trace (which makes a read
// of the trace file stop recording) and each disk's trace/enable. The
// first two take no lock in the kernel, so they are read raw (see
// rawsys_linux.go).
func (f *ftraceSession) checkQuickSettingsLocked() {
	files := &f.settings
	if on, err := files.tracingOn.read(); err != nil || on != "1" {
		f.markAll("tracing_on switched off by someone else")
	}
	if f.changedSetting("options/pause-on-trace") {
		if p, err := files.pause.read(); err != nil || p != "0" {
			f.markAll("pause-on-trace set again by someone else: reading the trace file stops recording")
		}
	}
	f.subsMu.RLock()
	defer f.subsMu.RUnlock()
	for _, l := range f.subs {
		for _, u := range l {
			if u.stopping.Load() {
				continue
			}
			if en, err := u.enable.read(); err != nil || en != "1" {
				u.set.MarkIncomplete("blktrace of " + u.dev.disk + " disabled by someone else")
			}
		}
	}
}

// checkOtherSettingsLocked checks the settings checkQuickSettingsLocked
// leaves out; some of their files take the tracing mutex.
func (f *ftraceSession) checkOtherSettingsLocked() {
	files := &f.settings
	if cur, err := files.currentTracer.read(); err != nil || cur != "blk" {
		f.markAll(fmt.Sprintf("current_tracer changed to %q by someone else", cur))
	}
	if kb, err := f.bufferSizeKB(); err != nil || kb != f.bufferKB {
		// Resizing disables recording while it runs.
		f.markAll(fmt.Sprintf("buffer_size_kb changed from %s to %s by someone else", f.bufferKB, kb))
		f.bufferKB = kb
	}
	if m, err := files.cpumask.read(); err != nil || m != f.cpumask {
		f.markAll(fmt.Sprintf("tracing_cpumask changed from %s to %s by someone else", f.cpumask, m))
	}
	// Not a loss, but the readers would spin (see newFtraceSession): put
	// it back.
	if p, err := files.percent.read(); err == nil && p == "0" {
		writeFile(f.path("buffer_percent"), defaultBufferPercent)
	}
}

// flush is the barrier (see Tracer). The readers check their CPU's loss
// counters before they answer, and the settings are checked once after:
// a setting changed before the call shows in the sets when flush returns.
// Also when the barrier failed (the kernel refuses markers while
// tracing_on is 0), unless the readers are gone.
func (f *ftraceSession) flush(ctx context.Context) error {
	var err error
	if f.markers != nil {
		err = f.markers.barrier(ctx, f.readers, 10*time.Second)
	} else {
		err = flushAll(ctx, f.readers)
	}
	if !errors.Is(err, ErrStopped) {
		f.checkSettings()
	}
	return err
}
