package tracer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// A cpuReader drains one CPU's kernel buffer (a trace_pipe_raw or a relay
// file, opened non-blocking) on its own goroutine. It sleeps in poll(2)
// until the kernel says data is ready, a flush request arrives (through an
// eventfd), or the poll interval passes, and then drains the buffer: how
// much depends on why it woke (see drainMode).
type cpuReader struct {
	cpu   int
	fd    int // non-blocking trace file
	efd   int // eventfd: wakes the goroutine for flush and stop
	drain func(drainMode) error
	reqs  chan chan error
	stopc chan struct{}
	done  chan struct{}
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
	// events of the page being written: the poll interval passed, so
	// the buffer is quiet, and events should not wait longer.
	drainQuiet
	// drainAll takes everything until the kernel has nothing more: a
	// flush or a stop waits for it.
	drainAll
)

func newCPUReader(cpu, fd int, drain func(drainMode) error) (*cpuReader, error) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("tracer: eventfd: %w", err)
	}
	return &cpuReader{
		cpu: cpu, fd: fd, efd: efd, drain: drain,
		reqs:  make(chan chan error, 64),
		stopc: make(chan struct{}),
		done:  make(chan struct{}),
	}, nil
}

func (c *cpuReader) wake() {
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	unix.Write(c.efd, one[:])
}

// run is the reader's goroutine; idle is called after each drain (for
// loss-counter checks), with force set when a flush or stop waits for the
// drain: the check must not be skipped then.
func (c *cpuReader) run(interval time.Duration, idle func(force bool)) {
	defer close(c.done)
	fds := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}, {Fd: int32(c.efd), Events: unix.POLLIN}}
	ms := int(interval / time.Millisecond)
	if ms < 1 {
		ms = 1
	}
	var buf [8]byte
	for {
		ready, err := unix.Poll(fds, ms)
		if err != nil && err != unix.EINTR {
			// Poll on these files does not fail in practice; fall back
			// to the interval so nothing spins.
			time.Sleep(interval)
			ready = 0
		}
		unix.Read(c.efd, buf[:])
		// Take the pending flush requests before draining: their
		// barrier is this drain, which starts after they were made.
		var waiters []chan error
	collect:
		for {
			select {
			case w := <-c.reqs:
				waiters = append(waiters, w)
			default:
				break collect
			}
		}
		stopping := false
		select {
		case <-c.stopc:
			stopping = true
		default:
		}
		if h := testHookBeforeDrain.Load(); h != nil {
			(*h)(c.cpu)
		}
		mode := drainPages
		switch {
		case len(waiters) > 0 || stopping:
			mode = drainAll
		case ready == 0 || fds[0].Revents&unix.POLLIN == 0:
			mode = drainQuiet
		}
		err = c.drain(mode)
		if idle != nil {
			idle(mode == drainAll)
		}
		for _, w := range waiters {
			w <- err
		}
		if stopping {
			return
		}
	}
}

// testHookBeforeDrain, when set by a test before Start, runs on each
// reader's goroutine before each drain: the overrun test uses it to stall
// the readers as a starved machine would.
var testHookBeforeDrain atomic.Pointer[func(cpu int)]

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
			unix.Close(r.fd)
			unix.Close(r.efd)
		}()
	}
	wg.Wait()
}

// readNonblock reads once, retrying on EINTR; it returns 0, nil when the
// kernel has nothing (EAGAIN or end of data).
func readNonblock(fd int, p []byte) (int, error) {
	for {
		n, err := unix.Read(fd, p)
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
// ring counts as empty.
func readRing(fd int, p []byte) (n int, empty bool, err error) {
	for zeros := int64(0); ; {
		n, err := unix.Read(fd, p)
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
		if zeros >= 4 {
			return 0, true, nil
		}
		time.Sleep(100 * time.Microsecond)
	}
}
