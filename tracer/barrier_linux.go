package tracer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// markers implements the per-CPU half of the ftrace flush barrier: a
// trace_marker write on each CPU, from a thread pinned to it. A CPU's ring
// is FIFO, so once its reader has parsed our marker it has parsed every
// event committed on that CPU before the marker was written, in particular
// every event of a write that completed before Flush was called. This
// does not depend on how the kernel answers a read of a ring it cannot
// take a page from (EAGAIN, or 0 bytes).
type markers struct {
	fd        int    // trace_marker, write-only
	printType uint16 // ftrace "print" event id
	prefix    []byte // "blockimage-barrier pid=N gen="
	mu        sync.Mutex
	seen      map[int]uint64 // highest generation parsed per CPU
	fdMu      sync.RWMutex   // write holds it shared, close exclusively
	closed    bool
	gen       uint64
}

func openMarkers(dir string) (*markers, error) {
	b, err := os.ReadFile(filepath.Join(dir, "events", "ftrace", "print", "format"))
	if err != nil {
		return nil, err
	}
	var id uint64
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "ID: "); ok {
			id, err = strconv.ParseUint(strings.TrimSpace(v), 10, 16)
			if err != nil {
				return nil, err
			}
		}
	}
	if id == 0 {
		return nil, fmt.Errorf("no ID in the print event format")
	}
	fd, err := unix.Open(filepath.Join(dir, "trace_marker"), unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return &markers{
		fd:        fd,
		printType: uint16(id),
		prefix:    fmt.Appendf(nil, "blockimage-barrier pid=%d gen=", os.Getpid()),
		seen:      make(map[int]uint64),
	}, nil
}

// write puts marker gen into the ring of each CPU in cpus and returns the
// CPUs it wrote on: an offline CPU (pinning fails with EINVAL) gets no new
// events and needs no marker; the drain covers what its ring holds.
func (m *markers) write(cpus []int, gen uint64) ([]int, error) {
	m.fdMu.RLock()
	defer m.fdMu.RUnlock()
	if m.closed {
		return nil, ErrStopped
	}
	msg := strconv.AppendUint(append([]byte(nil), m.prefix...), gen, 10)
	errs := make([]error, len(cpus))
	var wg sync.WaitGroup
	for i, cpu := range cpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.writeOn(cpu, msg)
		}()
	}
	wg.Wait()
	var written []int
	for i, err := range errs {
		switch err {
		case nil:
			written = append(written, cpus[i])
		case errOffline:
		default:
			return nil, err
		}
	}
	return written, nil
}

var errOffline = errors.New("cpu offline")

// writeOn writes msg to trace_marker from a thread pinned to cpu, so that
// the marker lands in that CPU's ring.
//
// The thread gets its CPU affinity back before the goroutine unlocks it.
// A goroutine that exits while locked ends its thread instead, and a
// thread's end is what Pdeathsig watches: every child that thread had
// started with Pdeathsig (test servers, mtcp's compressors, the caller's
// own) would be killed with it.
func (m *markers) writeOn(cpu int, msg []byte) error {
	runtime.LockOSThread()
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("cpu affinity: %w", err)
	}
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		runtime.UnlockOSThread()
		if err == unix.EINVAL && !cpuOnline(cpu) {
			return errOffline
		}
		// An online CPU outside our cpuset (a container, taskset)
		// still runs writers: without a marker there, the barrier
		// would rest on the drain alone.
		return fmt.Errorf("pin to cpu%d: %w", cpu, err)
	}
	_, err := unix.Write(m.fd, msg)
	// Should the old affinity not come back, the thread stays locked and
	// ends with the goroutine: its pinning must not leak to others.
	if unix.SchedSetaffinity(0, &old) == nil {
		runtime.UnlockOSThread()
	}
	if err != nil {
		return fmt.Errorf("trace_marker on cpu%d: %w", cpu, err)
	}
	return nil
}

// cpuOnline reports whether cpu is in /sys/devices/system/cpu/online
// (per_cpu holds a directory for every possible CPU, present or not).
func cpuOnline(cpu int) bool {
	s, err := readSysString("/sys/devices/system/cpu/online")
	if err != nil {
		return true // cannot tell: the barrier must not skip it
	}
	return inCPUList(s, cpu)
}

// inCPUList reports whether cpu is in a list such as "0-3,5".
func inCPUList(list string, cpu int) bool {
	for _, r := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(r, "-")
		a, err1 := strconv.Atoi(lo)
		b, err2 := a, error(nil)
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 == nil && err2 == nil && a <= cpu && cpu <= b {
			return true
		}
	}
	return false
}

// observe looks at a print event parsed on cpu and records our marker.
func (m *markers) observe(cpu int, data []byte) {
	if len(data) < 16 {
		return
	}
	buf := data[16:]
	i := bytes.Index(buf, m.prefix)
	if i < 0 {
		return
	}
	digits := buf[i+len(m.prefix):]
	end := 0
	for end < len(digits) && digits[end] >= '0' && digits[end] <= '9' {
		end++
	}
	gen, err := strconv.ParseUint(string(digits[:end]), 10, 64)
	if err != nil {
		return
	}
	m.mu.Lock()
	if gen > m.seen[cpu] {
		m.seen[cpu] = gen
	}
	m.mu.Unlock()
}

func (m *markers) missing(cpus []int, gen uint64) []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []int
	for _, c := range cpus {
		if m.seen[c] < gen {
			out = append(out, c)
		}
	}
	return out
}

// barrier writes a new marker on every CPU and drains the readers until
// each has parsed it. It gives up after timeout (or when ctx ends).
func (m *markers) barrier(ctx context.Context, readers []*cpuReader, timeout time.Duration) error {
	cpus := make([]int, len(readers))
	for i, r := range readers {
		cpus[i] = r.cpu
	}
	m.mu.Lock()
	m.gen++
	gen := m.gen
	m.mu.Unlock()
	cpus, err := m.write(cpus, gen)
	if err != nil {
		// The kernel refuses markers while recording is off (tracing_on
		// 0): drain all the same, so that the readers' checks record
		// in the sets why events were lost, and report the failure.
		return errors.Join(err, flushAll(ctx, readers))
	}
	deadline := time.Now().Add(timeout)
	pause := 100 * time.Microsecond
	for {
		if err := flushAll(ctx, readers); err != nil {
			return err
		}
		miss := m.missing(cpus, gen)
		if len(miss) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tracer: flush barrier: marker %d not seen on cpus %v after %v", gen, miss, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
		if pause < 10*time.Millisecond {
			pause *= 2
		}
	}
}

func (m *markers) close() {
	m.fdMu.Lock()
	defer m.fdMu.Unlock()
	if !m.closed {
		m.closed = true
		unix.Close(m.fd)
	}
}
