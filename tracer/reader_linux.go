package tracer

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A cpuReader drains one CPU's kernel buffer (a trace_pipe_raw or a relay
// file, opened non-blocking) on its own goroutine. It waits until the
// kernel says data is ready, a flush request arrives, or the poll interval
// passes, and then drains the buffer: how much depends on why it woke (see
// drainMode).
//
// It waits in Go's runtime poller (epoll), not in a poll(2) system call:
// a goroutine blocked in a system call keeps the runtime's monitor thread
// waking every few microseconds to take its P back, about a thousand
// wake-ups a second that each take a CPU from the workload being traced
// (measured with fio on a loop device). A goroutine parked in the poller
// costs nothing until its file or its deadline fires. Files the poller
// cannot take fall back to poll(2) with an eventfd for wake-ups.
type cpuReader struct {
	cpu   int
	fd    int             // non-blocking trace file, owned by file
	file  *os.File        // fd, registered with the runtime poller if it could be
	conn  syscall.RawConn // file's, when the poller took it; nil: poll(2)
	efd   int             // eventfd that wakes a poll(2) wait; -1 with conn
	drain func(drainMode) (took bool, err error)
	// spinWait bounds a wait that ignores the kernel's data signal (see
	// run): spinGuardWait, unless a test sets another before run.
	spinWait time.Duration
	reqs     chan chan error
	stopc    chan struct{}
	done     chan struct{}

	closeMu sync.Mutex // wake does not write to a closed (perhaps reused) eventfd
	closed  bool
}

// drainMode says how much of a CPU's buffer a drain must take.
//
// While writes stream in, the ftrace ring's newest page is the one the
// kernel is writing to. Reading it takes a few events at a time, each read
// racing the writer on that CPU, and a reader that keeps reading it chases
// the writer: thousands of reads and wake-ups a second, each one taking
// the CPU from the workload being traced. (Measured with fio on a loop
// device: 20% fewer writes per second, while the same events taken a
// whole page at a time cost about 1%.) So a reader woken because the
// buffer filled takes complete pages only; the page being written waits
// until it is complete, or until a flush, which takes everything.
type drainMode int

const (
	// drainPages takes the complete pages: the buffer filled up.
	drainPages drainMode = iota
	// drainQuiet takes the complete pages and reads once more for the
	// events of the page being written: the poll interval (or the spin
	// guard, see run) passed without a data signal, so the buffer is
	// quiet, and events should not wait longer.
	drainQuiet
	// drainAll takes everything until the kernel has nothing more: a
	// flush or a stop waits for it.
	drainAll
)

// newCPUReader takes over fd: the reader's close closes it, and so does
// newCPUReader itself when it fails.
func newCPUReader(cpu, fd int, name string, drain func(drainMode) (bool, error)) (*cpuReader, error) {
	c := &cpuReader{
		cpu: cpu, fd: fd, efd: -1, drain: drain, spinWait: spinGuardWait,
		file:  os.NewFile(uintptr(fd), name),
		reqs:  make(chan chan error, 64),
		stopc: make(chan struct{}),
		done:  make(chan struct{}),
	}
	// SetReadDeadline fails for a file the runtime poller did not take.
	if err := c.file.SetReadDeadline(time.Time{}); err == nil && !testForcePoll.Load() {
		if conn, err := c.file.SyscallConn(); err == nil {
			c.conn = conn
			return c, nil
		}
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		c.file.Close()
		return nil, fmt.Errorf("tracer: eventfd: %w", err)
	}
	c.efd = efd
	return c, nil
}

// close closes the trace file and the eventfd, once.
func (c *cpuReader) close() {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if !c.closed {
		c.closed = true
		c.file.Close()
		if c.efd >= 0 {
			unix.Close(c.efd)
		}
	}
}

// wake interrupts the reader's wait. The caller queued its request (or
// closed stopc) before: the reader looks for requests after it armed its
// wait and before it waits, so a wake between the two is not lost.
func (c *cpuReader) wake() {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if c.closed {
		return // the reader has stopped: nothing to wake
	}
	if c.conn != nil {
		c.file.SetReadDeadline(time.Unix(1, 0)) // in the past: ends the wait now
		return
	}
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	unix.Write(c.efd, one[:])
}

// wait returns when the kernel signals data (unless ignoreData), when
// interval passes, or when wake is called; readable reports the first. It
// arms the wait before it takes the pending flush requests and looks for
// a stop, and does not wait at all if there is either.
func (c *cpuReader) wait(interval time.Duration, ignoreData bool) (readable bool, waiters []chan error, stopping bool) {
	if c.conn != nil {
		c.file.SetReadDeadline(time.Now().Add(interval))
	}
	waiters, stopping = c.requests(nil)
	if len(waiters) > 0 || stopping {
		return false, waiters, stopping
	}
	if c.conn != nil {
		first := true
		err := c.conn.Read(func(uintptr) bool {
			// Called once before waiting, and again when the file
			// becomes readable.
			if ignoreData {
				return false // until the deadline or a wake
			}
			if first {
				first = false
				return c.pollNow()
			}
			return true
		})
		readable = err == nil
	} else {
		fds := []unix.PollFd{{Fd: int32(c.efd), Events: unix.POLLIN}, {Fd: int32(c.fd), Events: unix.POLLIN}}
		if ignoreData {
			fds = fds[:1]
		}
		ms := max(int(interval/time.Millisecond), 1)
		n, err := unix.Poll(fds, ms)
		if err != nil && err != unix.EINTR {
			// Poll on these files does not fail in practice; fall
			// back to the interval so that nothing spins.
			time.Sleep(interval)
		}
		var buf [8]byte
		unix.Read(c.efd, buf[:])
		readable = err == nil && n > 0 && len(fds) > 1 && fds[1].Revents&unix.POLLIN != 0
	}
	// Take the requests made while waiting: their barrier is the drain
	// that follows, which starts after they were made.
	waiters, stopping = c.requests(waiters)
	return readable, waiters, stopping
}

// pollNow asks the kernel, without waiting, whether the file is readable.
// The call is not only a check: the ftrace ring wakes its pollers only
// after a poll found it below the watermark (buffer_percent), and the
// runtime poller's epoll, edge-triggered, polls the file only when it
// reports it. Without this call, the first wake-up that arrived while the
// reader was draining would be the last: every later wait would end at
// the interval, and a ring filling faster than that would overrun.
func (c *cpuReader) pollNow() bool {
	fds := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}}
	for {
		n, err := rawPollNow(fds)
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0 && fds[0].Revents&unix.POLLIN != 0
	}
}

// requests appends the pending flush requests to waiters and reports
// whether the reader must stop.
func (c *cpuReader) requests(waiters []chan error) ([]chan error, bool) {
	for {
		select {
		case w := <-c.reqs:
			waiters = append(waiters, w)
		default:
			select {
			case <-c.stopc:
				return waiters, true
			default:
				return waiters, false
			}
		}
	}
}

// run is the reader's goroutine; afterDrain is called after each drain
// (for loss-counter checks), with force set when a flush or stop waits
// for the drain: the check must not be skipped then.
func (c *cpuReader) run(interval time.Duration, afterDrain func(force bool)) {
	defer close(c.done)
	// empty counts the wake-ups on data in a row that found no complete
	// page. A kernel whose poll reports any event (buffer_percent 0, or a
	// kernel before 5.2 that has none) would wake the reader again at
	// once, for ever; after two, the next wait ignores the data for
	// spinGuardWait at most (or the interval, if shorter), and the quiet
	// drain at its end takes the page being written. (One can be a late
	// wake-up for pages already taken.) Not the whole interval: writes
	// that pick up meanwhile must not find the reader deaf for a second
	// while the ring overruns.
	empty := 0
	for {
		wait := interval
		if empty >= 2 {
			wait = min(interval, cmp.Or(c.spinWait, spinGuardWait))
		}
		readable, waiters, stopping := c.wait(wait, empty >= 2)
		if h := testHookBeforeDrain.Load(); h != nil {
			(*h)(c.cpu)
		}
		mode := drainPages
		switch {
		case len(waiters) > 0 || stopping:
			mode = drainAll
		case !readable:
			mode = drainQuiet
		}
		took, err := c.drain(mode)
		if mode == drainPages && !took {
			empty++
		} else {
			empty = 0
		}
		if afterDrain != nil {
			afterDrain(mode == drainAll)
		}
		for _, w := range waiters {
			w <- err
		}
		if stopping {
			return
		}
	}
}

// spinGuardWait is how long a reader ignores a data signal that gave it
// no complete page twice in a row (see run): three wake-ups per period at
// most while a page fills on a kernel whose poll reports every event.
const spinGuardWait = 50 * time.Millisecond

// testHookBeforeDrain, when set by a test before Start, runs on each
// reader's goroutine before each drain: the overrun test uses it to stall
// the readers as a starved machine would.
var testHookBeforeDrain atomic.Pointer[func(cpu int)]

// testForcePoll, when set by a test, makes new readers wait in poll(2) as
// they do on files the runtime poller cannot take.
var testForcePoll atomic.Bool

// maxZeroRun is the longest run of 0-byte trace_pipe_raw reads seen, for
// the tests' logs.
var maxZeroRun atomic.Int64

// flushAll asks each reader for a drain that starts after this call and
// waits for all of them.
func flushAll(ctx context.Context, readers []*cpuReader) error {
	waits := make([]chan error, len(readers))
	for i, r := range readers {
		w := make(chan error, 1)
		select {
		case r.reqs <- w:
		case <-r.done:
			return ErrStopped
		case <-ctx.Done():
			return ctx.Err()
		}
		r.wake()
		waits[i] = w
	}
	var errs []error
	for i, w := range waits {
		select {
		case err := <-w:
			if err != nil {
				errs = append(errs, fmt.Errorf("cpu%d: %w", readers[i].cpu, err))
			}
		case <-readers[i].done:
			return ErrStopped
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return errors.Join(errs...)
}

// stopAll makes each reader drain one last time and exit, then closes the
// files.
func stopAll(readers []*cpuReader) {
	var wg sync.WaitGroup
	for _, r := range readers {
		close(r.stopc)
		r.wake()
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-r.done
			r.close()
		}()
	}
	wg.Wait()
}

// readNonblock reads once, retrying on EINTR; it returns 0, nil when the
// kernel has nothing (EAGAIN or end of data).
func readNonblock(fd int, p []byte) (int, error) {
	for {
		n, err := rawRead(fd, p)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, nil
		case err != nil:
			return 0, err
		}
		return n, nil
	}
}

// readRing reads one page from a non-blocking trace_pipe_raw. The kernel
// answers EAGAIN when it finds the ring empty, and 0 bytes when it cannot
// take a page although the ring does not look empty: this happens when the
// ring holds no entries (ring_buffer_read_page refuses to swap in a page
// when the entry count is zero, while the emptiness test looks at the
// commit page only), and it persists while nothing is written. A few quick
// retries cover a writer in the middle of a page switch; after them the
// ring counts as empty. A quiet drain does not retry (patient false): it
// leaves a page switch to the next drain, and on a ring that has gone
// quiet after its events were taken, where every read answers 0 bytes, it
// would otherwise sleep three times at each poll interval.
func readRing(fd int, p []byte, patient bool) (n int, empty bool, err error) {
	for zeros := int64(0); ; {
		n, err := rawRead(fd, p)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, true, nil
		case err != nil:
			return 0, false, err
		case n > 0:
			return n, false, nil
		}
		zeros++
		if zeros > maxZeroRun.Load() {
			maxZeroRun.Store(zeros)
		}
		if zeros >= 4 || !patient {
			return 0, true, nil
		}
		time.Sleep(100 * time.Microsecond)
	}
}
