package tracer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

func (f *ftraceSession) path(name ...string) string {
	return filepath.Join(append([]string{f.dir}, name...)...)
}

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

// The ftrace blk tracer is global to the machine: one current_tracer, one
// ring buffer per CPU. A process therefore runs one ftraceSession, shared
// by every Tracer on the ftrace source: the first Start selects the
// tracer, resets the ring and starts one reader per CPU; each Start
// enables its disk (/sys/block/DISK/trace/enable) and registers a
// subscriber; the readers apply each event to the subscribers of its
// disk; the last Stop restores the settings.
var (
	sessionMu sync.Mutex // serialises Start and Stop of ftrace Tracers
	session   *ftraceSession
)

// defaultBufferPercent is the kernel's default buffer_percent: pollers
// of a CPU's ring wake when it is half full.
const defaultBufferPercent = "50"

type ftraceSession struct {
	dir      string // tracefs
	pageSize int
	nonBlk   map[uint16]bool // ids of ftrace's own event types (print, bprint...)
	markers  *markers        // the flush barrier's trace_marker writes; nil: drain only
	readers  []*cpuReader
	states   []*cpuState  // the readers' state, by index
	blkType  atomic.Int32 // the blk event's type id, learnt from the first one; -1 before
	interval time.Duration

	subsMu sync.RWMutex
	subs   map[uint32][]*ftraceSub // by whole-disk dev_t
	disks  map[string]int          // disk name -> subscribers; guarded by sessionMu
	refs   int                     // subscribers; guarded by sessionMu

	// What we changed, to restore, and what must stay as we set it.
	changed      []settingChange // by applyChanges, in order; close puts the old values back
	undoRecorded bool            // undoPath holds our record
	bufferKB     string
	cpumask      string

	checkMu  sync.Mutex
	settings settingFiles // guarded by checkMu
	// watchStop ends the goroutine that checks the settings every
	// settingsCheckEvery, which closes watchDone; nil before it starts.
	watchStop, watchDone chan struct{}
}

// settingsCheckEvery is how often a session checks tracing_on,
// pause-on-trace and the disks' trace/enable (checkQuickSettingsLocked),
// whose switch off and on again drops events without a counter: a switch
// shorter than this can go unseen. The other settings are checked every
// poll interval, and every Flush and Stop checks all of them. One
// goroutine per session does it, however many CPUs there are, so that the
// readers can sleep for their whole poll interval.
const settingsCheckEvery = 100 * time.Millisecond

// watchSettings starts the periodic settings checks.
func (f *ftraceSession) watchSettings() {
	f.watchStop, f.watchDone = make(chan struct{}), make(chan struct{})
	fullEvery := max(1, int(f.interval/settingsCheckEvery))
	go func() {
		defer close(f.watchDone)
		tick := time.NewTicker(settingsCheckEvery)
		defer tick.Stop()
		for n := 1; ; n++ {
			select {
			case <-f.watchStop:
				return
			case <-tick.C:
			}
			f.checkMu.Lock()
			f.checkQuickSettingsLocked()
			if n%fullEvery == 0 {
				f.checkOtherSettingsLocked()
			}
			f.checkMu.Unlock()
		}
	}()
}

// stopWatching ends the periodic settings check, if it runs, and waits
// for it: close must not restore settings under it.
func (f *ftraceSession) stopWatching() {
	if f.watchStop != nil {
		close(f.watchStop)
		<-f.watchDone
		f.watchStop = nil
	}
}

// settingFiles are the tracefs files the settings checks read.
type settingFiles struct {
	currentTracer, tracingOn, bufferSizeKB, cpumask, pause, percent *sysFile
}

func (f *ftraceSession) openSettings() {
	f.settings = settingFiles{
		currentTracer: newSysFile(f.path("current_tracer")),
		tracingOn:     newRawSysFile(f.path("tracing_on")),
		bufferSizeKB:  newSysFile(f.path("buffer_size_kb")),
		cpumask:       newSysFile(f.path("tracing_cpumask")),
		pause:         newRawSysFile(f.path("options", "pause-on-trace")),
		percent:       newSysFile(f.path("buffer_percent")),
	}
}

func (s *settingFiles) close() {
	for _, f := range []*sysFile{s.currentTracer, s.tracingOn, s.bufferSizeKB, s.cpumask, s.pause, s.percent} {
		if f != nil {
			f.close()
		}
	}
}

// An ftraceSub is one Tracer's share of the session: its disk, its
// partition and its Set.
type ftraceSub struct {
	s        *ftraceSession
	dev      *blockDevice
	set      *Set
	enable   *sysFile // DISK/trace/enable: read by checkSettings under checkMu and subsMu, closed under subsMu
	stopOnce sync.Once
	stopping atomic.Bool // its disk's enable may be 0 on purpose
}

func startFtrace(ctx context.Context, d *blockDevice, set *Set, o Options) (*ftraceSub, error) {
	sessionMu.Lock()
	defer sessionMu.Unlock()
	traceDir := filepath.Join(d.diskSys, "trace")
	if _, err := os.Stat(filepath.Join(traceDir, "enable")); err != nil {
		return nil, fmt.Errorf("tracer: %s has no blktrace sysfs controls: %w", d.disk, ErrUnavailable)
	}
	s := session
	if s == nil {
		var err error
		if s, err = newFtraceSession(o); err != nil {
			return nil, err
		}
	}
	u := &ftraceSub{s: s, dev: d, set: set, enable: newSysFile(filepath.Join(traceDir, "enable"))}
	if err := s.add(u); err != nil {
		if s.refs == 0 {
			// A new session: its readers run already.
			stopAll(s.readers)
			s.close()
		}
		return nil, err
	}
	session = s
	return u, nil
}

func newFtraceSession(o Options) (_ *ftraceSession, err error) {
	dir, err := findTracefs()
	if err != nil {
		return nil, err
	}
	f := &ftraceSession{dir: dir, interval: o.PollInterval, subs: make(map[uint32][]*ftraceSub), disks: make(map[string]int)}
	f.blkType.Store(-1)
	f.openSettings()
	if err := f.checkUnused(); err != nil {
		return nil, err
	}
	// Best effort: a record that cannot be acted on does not stop
	// tracing, and what it names is left as it is.
	restoreStaleSettings(dir)
	if f.pageSize, err = f.subbufSize(); err != nil {
		return nil, err
	}
	if f.nonBlk, err = f.ftraceEventIDs(); err != nil {
		return nil, err
	}
	cpus, err := filepath.Glob(f.path("per_cpu", "cpu*"))
	if err != nil || len(cpus) == 0 {
		return nil, fmt.Errorf("tracer: no per-CPU buffers under %s: %w", f.dir, ErrUnavailable)
	}
	if f.cpumask, err = readSysString(f.path("tracing_cpumask")); err != nil {
		return nil, fmt.Errorf("tracer: %w", err)
	}
	// From here on, every change is undone on failure.
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	// Without trace_marker (the markers option off), Flush falls back to
	// draining until EAGAIN; see Tracer.
	if m, err := openMarkers(dir); err == nil {
		f.markers = m
	}
	var changes []settingChange
	if o.BufferSizeKB > 0 {
		old, err := f.bufferSizeKB()
		if err != nil {
			return nil, err
		}
		changes = append(changes, settingChange{"buffer_size_kb", old, strconv.Itoa(o.BufferSizeKB)})
	}
	// Reading the "trace" file stops recording for the time of the read
	// when pause-on-trace is set (the default), and the ring buffer drops
	// events silently while recording is off: a "cat trace" by an
	// administrator would lose writes without a trace in any counter.
	if p, err := f.settings.pause.read(); err == nil && p != "0" {
		changes = append(changes, settingChange{"options/pause-on-trace", p, "0"})
	}
	// A reader takes complete pages only when woken (see drainMode). With
	// buffer_percent 0 a poll finds the ring readable as soon as it holds
	// one event, so the readers would spin on the page being written.
	if p, err := f.settings.percent.read(); err == nil && p == "0" {
		changes = append(changes, settingChange{"buffer_percent", p, defaultBufferPercent})
	}
	if err := f.applyChanges(changes); err != nil {
		return nil, err
	}
	if err := writeFile(f.path("current_tracer"), "blk"); err != nil {
		return nil, fmt.Errorf("tracer: select the blk tracer: %w", err)
	}
	// Empty the ring so that its counters start from zero. Only here:
	// later Tracers join a running session and must not wipe its events.
	if err := writeFile(f.path("trace"), ""); err != nil {
		return nil, fmt.Errorf("tracer: reset the ring buffer: %w", err)
	}
	if f.bufferKB, err = f.bufferSizeKB(); err != nil {
		return nil, err
	}
	mask, err := parseCPUMask(f.cpumask)
	if err != nil {
		return nil, fmt.Errorf("tracer: tracing_cpumask: %w", err)
	}
	for _, c := range cpus {
		cpu, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(c), "cpu"))
		if err != nil {
			continue
		}
		// A CPU outside tracing_cpumask records nothing, silently.
		if cpu >= len(mask)*64 || mask[cpu/64]&(1<<(cpu%64)) == 0 {
			return nil, fmt.Errorf("tracer: tracing_cpumask %s excludes cpu%d: %w", f.cpumask, cpu, ErrBusy)
		}
		st := &cpuState{cpu: cpu, fd: -1, pipe: [2]int{-1, -1}, page: make([]byte, f.pageSize),
			stats: newRawSysFile(filepath.Join(c, "stats"))}
		f.states = append(f.states, st) // close closes its files
		if st.base, err = readLossCounters(st.stats); err != nil {
			return nil, fmt.Errorf("tracer: %w", err)
		}
		st.fd, err = unix.Open(filepath.Join(c, "trace_pipe_raw"), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("tracer: open %s: %w", filepath.Join(c, "trace_pipe_raw"), err)
		}
		st.openPipe(f.pageSize)
		r, err := newCPUReader(cpu, st.fd, filepath.Join(c, "trace_pipe_raw"), func(m drainMode) (bool, error) { return f.drain(st, m) })
		if err != nil {
			st.closePipe()
			return nil, err
		}
		f.readers = append(f.readers, r)
	}
	for i, r := range f.readers {
		st := f.states[i]
		go r.run(f.interval, func(force bool) { f.afterDrain(st, force) })
	}
	f.watchSettings()
	return f, nil
}

// add enables tracing of u's disk (unless another subscriber did) and
// registers u. Called with sessionMu held.
func (f *ftraceSession) add(u *ftraceSub) error {
	traceDir := filepath.Join(u.dev.diskSys, "trace")
	first := f.disks[u.dev.disk] == 0
	if first {
		if en, err := readSysString(filepath.Join(traceDir, "enable")); err != nil || en != "0" {
			return fmt.Errorf("tracer: blktrace of %s is already enabled (%q, %v): %w", u.dev.disk, en, err, ErrBusy)
		}
		// Only requests that change data, or may: the kernel keeps an
		// event when any of its categories is in the mask, and every
		// write, discard, write-zeroes or passthrough write has the
		// write category.
		if err := writeFile(filepath.Join(traceDir, "act_mask"), "write"); err != nil {
			return fmt.Errorf("tracer: %w", err)
		}
	}
	f.subsMu.Lock()
	f.subs[u.dev.diskDev] = append(f.subs[u.dev.diskDev], u)
	f.subsMu.Unlock()
	if first {
		if err := writeFile(filepath.Join(traceDir, "enable"), "1"); err != nil {
			f.remove(u)
			return fmt.Errorf("tracer: enable tracing of %s: %w", u.dev.disk, err)
		}
	}
	f.disks[u.dev.disk]++
	f.refs++
	return nil
}

func (f *ftraceSession) remove(u *ftraceSub) {
	f.subsMu.Lock()
	defer f.subsMu.Unlock()
	l := f.subs[u.dev.diskDev]
	for i, v := range l {
		if v == u {
			l = append(l[:i:i], l[i+1:]...)
			break
		}
	}
	if len(l) == 0 {
		delete(f.subs, u.dev.diskDev)
	} else {
		f.subs[u.dev.diskDev] = l
	}
	u.enable.close()
}

// markAll marks every subscriber's set incomplete: a loss in the shared
// ring may have hit any disk.
func (f *ftraceSession) markAll(reason string) {
	f.subsMu.RLock()
	defer f.subsMu.RUnlock()
	for _, l := range f.subs {
		for _, u := range l {
			u.set.MarkIncomplete(reason)
		}
	}
}

func (u *ftraceSub) flush(ctx context.Context) error { return u.s.flush(ctx) }

// stop disables tracing of the disk when no other subscriber needs it,
// applies what the ring still holds, and, for the last subscriber, stops
// the readers and restores the settings.
func (u *ftraceSub) stop() error {
	var errs []error
	u.stopOnce.Do(func() {
		sessionMu.Lock()
		defer sessionMu.Unlock()
		f := u.s
		u.stopping.Store(true)
		f.disks[u.dev.disk]--
		if f.disks[u.dev.disk] == 0 {
			delete(f.disks, u.dev.disk)
			if err := writeFile(filepath.Join(u.dev.diskSys, "trace", "enable"), "0"); err != nil {
				errs = append(errs, err)
			}
		}
		f.refs--
		if f.refs > 0 {
			// The others keep the readers: let them apply what is left
			// for this disk before it leaves.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := f.flush(ctx); err != nil {
				errs = append(errs, err)
			}
			cancel()
			f.remove(u)
			return
		}
		stopAll(f.readers) // each drains one last time
		f.checkSettings()
		f.remove(u)
		errs = append(errs, f.close())
		session = nil
	})
	return errors.Join(errs...)
}

// close undoes what newFtraceSession changed. current_tracer was nop: we
// refuse to start otherwise.
func (f *ftraceSession) close() error {
	f.stopWatching()
	var errs []error
	// First the ring files: the kernel refuses to change current_tracer
	// (EBUSY) while a trace_pipe_raw is open.
	for _, r := range f.readers {
		select {
		case <-r.done:
		default:
			// Never started (Start failed): close the files here.
			r.close()
		}
	}
	for _, st := range f.states {
		st.closePipe()
		st.stats.close()
	}
	if cur, _ := readSysString(f.path("current_tracer")); cur == "blk" {
		errs = append(errs, writeFile(f.path("current_tracer"), "nop"))
	}
	f.checkMu.Lock()
	f.settings.close()
	f.checkMu.Unlock()
	for _, c := range f.changed {
		errs = append(errs, writeFile(f.path(c.name), c.old))
	}
	if f.markers != nil {
		f.markers.close()
	}
	if err := errors.Join(errs...); err != nil {
		// The record stays, for the next session to try again.
		return fmt.Errorf("tracer: restoring tracing settings: %w", err)
	}
	if f.undoRecorded {
		removeOwnUndoRecord()
	}
	return nil
}

// applyChanges records changes (see undoPath), then makes them, and
// keeps them for close, which puts the old values back.
func (f *ftraceSession) applyChanges(changes []settingChange) error {
	if len(changes) == 0 {
		return nil
	}
	// Best effort: without the record (no writable /run), the settings
	// are restored all the same unless the process dies first.
	f.undoRecorded = writeUndoRecord(ownUndoRecord(changes)) == nil
	for i, c := range changes {
		// Kept before the write: if it fails, close writes back the
		// old value, which the setting may still hold; no harm.
		f.changed = changes[:i+1]
		if err := writeFile(f.path(c.name), c.ours); err != nil {
			return fmt.Errorf("tracer: %w", err)
		}
		if c.name == "buffer_size_kb" {
			// The kernel may round the size: record what it shows,
			// which is what the next session will compare.
			if kb, err := f.bufferSizeKB(); err == nil && kb != c.ours {
				changes[i].ours = kb
				if f.undoRecorded {
					writeUndoRecord(ownUndoRecord(changes))
				}
			}
		}
	}
	return nil
}

// changedSetting reports whether this session changed the setting name.
func (f *ftraceSession) changedSetting(name string) bool {
	for _, c := range f.changed {
		if c.name == name {
			return true
		}
	}
	return false
}

// parseCPUMask parses tracing_cpumask: hex words of 32 bits separated by
// commas, most significant first.
func parseCPUMask(s string) ([]uint64, error) {
	words := strings.Split(strings.TrimSpace(s), ",")
	if len(words) > 1<<12 {
		return nil, fmt.Errorf("mask %q too long", s)
	}
	mask := make([]uint64, (len(words)+1)/2)
	for i, w := range words {
		v, err := strconv.ParseUint(w, 16, 32)
		if err != nil {
			return nil, fmt.Errorf("bad mask %q", s)
		}
		bit := 32 * (len(words) - 1 - i)
		mask[bit/64] |= v << (bit % 64)
	}
	return mask, nil
}

// checkUnused refuses when someone else uses ftrace: another tracer, event
// tracing into the global buffer, or tracing switched off.
func (f *ftraceSession) checkUnused() error {
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
	return nil
}

// bufferSizeKB reads buffer_size_kb; under checkMu once readers run.
func (f *ftraceSession) bufferSizeKB() (string, error) {
	s, err := f.settings.bufferSizeKB.read()
	if err != nil {
		return "", fmt.Errorf("tracer: %w", err)
	}
	return expandedKB(s), nil
}

// expandedKB returns the size buffer_size_kb shows. "7 (expanded: 1408)"
// means the boot-time buffer is not allocated yet; selecting any tracer
// expands it to 1408, the size to restore.
func expandedKB(s string) string {
	if _, exp, ok := strings.Cut(s, "(expanded: "); ok {
		return strings.TrimSuffix(exp, ")")
	}
	return s
}

// subbufSize is the size of the pages trace_pipe_raw returns.
func (f *ftraceSession) subbufSize() (int, error) {
	if kb, err := readSysInt(f.path("buffer_subbuf_size_kb")); err == nil && kb > 0 && kb <= 1<<20 {
		return int(kb) << 10, nil
	}
	return os.Getpagesize(), nil
}

// ftraceEventIDs returns the type ids of ftrace's own events (print,
// bprint, function...): any event of another type in the ring is the blk
// tracer's.
func (f *ftraceSession) ftraceEventIDs() (map[uint16]bool, error) {
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

// lossCounters are the fields of per_cpu/cpuN/stats we watch.
type lossCounters struct{ overrun, commitOverrun, dropped, read uint64 }

func readLossCounters(stats *sysFile) (lossCounters, error) {
	s, err := stats.read()
	if err != nil {
		return lossCounters{}, err
	}
	var lc lossCounters
	found := 0
	for line := range strings.Lines(s) {
		k, v, ok := strings.Cut(line, ":")
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
		case "read events":
			lc.read, found = n, found+1
		}
	}
	if found < 4 {
		return lc, fmt.Errorf("%s: no overrun counters", stats.path)
	}
	return lc, nil
}
