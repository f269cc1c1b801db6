package tracer

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pipeReader is a cpuReader over a pipe, with a drain that empties the
// pipe and records each drain's mode and what it read. With stuck set,
// page drains (drainPages) take nothing, as for the page being written.
type pipeReader struct {
	*cpuReader
	w      int // the pipe's write end
	mu     sync.Mutex
	drains []drainMode
	got    []byte
	signal chan drainMode
}

func newPipeReader(t *testing.T, poll bool, interval, spinWait time.Duration, stuck bool) *pipeReader {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	testForcePoll.Store(poll)
	defer testForcePoll.Store(false)
	pr := &pipeReader{w: p[1], signal: make(chan drainMode, 1024)}
	r, err := newCPUReader(0, p[0], "pipe", func(m drainMode) (bool, error) {
		buf := make([]byte, 4096)
		var got []byte
		for !(stuck && m == drainPages) {
			n, err := readNonblock(p[0], buf)
			if err != nil {
				return false, err
			}
			if n == 0 {
				break
			}
			got = append(got, buf[:n]...)
		}
		pr.mu.Lock()
		pr.drains = append(pr.drains, m)
		pr.got = append(pr.got, got...)
		pr.mu.Unlock()
		select {
		case pr.signal <- m:
		default:
		}
		return len(got) > 0, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.conn == nil; got != poll {
		t.Fatalf("reader waits in poll(2): %v, want %v", got, poll)
	}
	pr.cpuReader = r
	r.spinWait = spinWait
	go r.run(interval, nil)
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			stopAll([]*cpuReader{r})
		}
		unix.Close(p[1])
	})
	return pr
}

// count returns how many drains had mode m.
func (pr *pipeReader) count(m drainMode) int {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	n := 0
	for _, d := range pr.drains {
		if d == m {
			n++
		}
	}
	return n
}

func (pr *pipeReader) received() string {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return string(pr.got)
}

// TestCPUReaderWakes checks both ways a reader waits (the runtime poller
// and poll(2)): data wakes it for a drain of complete pages, a flush gets
// a full drain that starts after it was asked for, and a stop drains one
// last time. The interval is an hour, so no wait ends by timing out: a
// lost wake-up hangs the flush, and the context ends the test.
func TestCPUReaderWakes(t *testing.T) {
	for _, poll := range []bool{false, true} {
		t.Run(fmt.Sprintf("poll=%v", poll), func(t *testing.T) {
			pr := newPipeReader(t, poll, time.Hour, time.Hour, false)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()

			unix.Write(pr.w, []byte("data"))
			for m := range pr.signal {
				if m != drainPages {
					t.Fatalf("drain mode %d after data, want drainPages", m)
				}
				if pr.received() == "data" {
					break
				}
			}

			// Each flush's drain must see what was written before it.
			// Many rounds, so that flushes land at every point of the
			// reader's loop.
			written := "data"
			for i := range 2000 {
				msg := fmt.Sprintf("<%d>", i)
				unix.Write(pr.w, []byte(msg))
				written += msg
				if err := flushAll(ctx, []*cpuReader{pr.cpuReader}); err != nil {
					t.Fatalf("flush %d: %v", i, err)
				}
				if got := pr.received(); got != written {
					t.Fatalf("flush %d returned before its drain read %q (have %q)", i, msg, got[max(0, len(got)-20):])
				}
			}
			// One full drain per flush: the last drain need not be one
			// (a poll(2) interrupted by a signal ends like a timeout).
			if n := pr.count(drainAll); n != 2000 {
				t.Fatalf("%d full drains for 2000 flushes", n)
			}

			unix.Write(pr.w, []byte("end"))
			stopAll([]*cpuReader{pr.cpuReader})
			if got := pr.received(); got[len(got)-3:] != "end" {
				t.Fatalf("stop did not drain: %q", got[max(0, len(got)-20):])
			}
			if _, err := unix.FcntlInt(uintptr(pr.fd), unix.F_GETFD, 0); err != unix.EBADF {
				t.Fatalf("trace file still open after stop: %v", err)
			}
			if err := flushAll(ctx, []*cpuReader{pr.cpuReader}); err != ErrStopped {
				t.Fatalf("flush after stop: %v, want ErrStopped", err)
			}
		})
	}
}

// TestCPUReaderQuietDrain checks that a reader with no data still drains
// (drainQuiet) when its interval passes, in both ways of waiting.
func TestCPUReaderQuietDrain(t *testing.T) {
	for _, poll := range []bool{false, true} {
		t.Run(fmt.Sprintf("poll=%v", poll), func(t *testing.T) {
			pr := newPipeReader(t, poll, time.Millisecond, time.Millisecond, false)
			select {
			case m := <-pr.signal:
				if m != drainQuiet {
					t.Fatalf("drain mode %d with no data and no flush, want drainQuiet", m)
				}
			case <-time.After(time.Minute):
				t.Fatal("no drain after the interval passed")
			}
		})
	}
}

// TestCPUReaderDoesNotSpin gives a reader data its page drains never take
// (as the page being written, on a kernel whose poll reports a single
// event): after two such wake-ups it must ignore the data until its spin
// guard (an hour here) or a flush, not drain again and again.
func TestCPUReaderDoesNotSpin(t *testing.T) {
	for _, poll := range []bool{false, true} {
		t.Run(fmt.Sprintf("poll=%v", poll), func(t *testing.T) {
			pr := newPipeReader(t, poll, time.Hour, time.Hour, true)
			unix.Write(pr.w, []byte("the page being written"))
			time.Sleep(500 * time.Millisecond) // a spinning reader drains thousands of times meanwhile
			if n := pr.count(drainPages); n != 2 {
				t.Fatalf("%d page drains of data they could not take, want 2", n)
			}
			if err := flushAll(context.Background(), []*cpuReader{pr.cpuReader}); err != nil {
				t.Fatal(err)
			}
			if n := pr.count(drainAll); n != 1 {
				t.Fatalf("%d full drains after a flush, want 1", n)
			}
		})
	}
}

// TestCPUReaderSpinGuardEndsBeforeTheInterval: a reader that ignores data
// its page drains cannot take must look again once its spin guard passes,
// even with an interval of an hour: the quiet drain then takes the page
// being written. Otherwise writes picking up meanwhile would find it deaf
// for a whole interval.
func TestCPUReaderSpinGuardEndsBeforeTheInterval(t *testing.T) {
	for _, poll := range []bool{false, true} {
		t.Run(fmt.Sprintf("poll=%v", poll), func(t *testing.T) {
			pr := newPipeReader(t, poll, time.Hour, time.Millisecond, true)
			unix.Write(pr.w, []byte("the page being written"))
			deadline := time.After(time.Minute)
			for {
				select {
				case m := <-pr.signal:
					if m == drainAll {
						t.Fatal("a full drain without a flush")
					}
					if m != drainQuiet {
						continue
					}
					pr.mu.Lock()
					got := string(pr.got)
					pr.mu.Unlock()
					if got != "the page being written" {
						t.Fatalf("quiet drain took %q", got)
					}
					if n := pr.count(drainPages); n != 2 {
						t.Fatalf("%d page drains before the quiet one, want 2", n)
					}
					return
				case <-deadline:
					t.Fatal("no quiet drain after the spin guard passed")
				}
			}
		})
	}
}
