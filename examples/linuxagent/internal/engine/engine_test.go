package engine

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

const blockSize = 4096

// device is an in-memory disk with a writer that records each write in a
// change log, as the kernel and the tracer do, and a freeze that stops it.
type device struct {
	gate   sync.Mutex // held by writers, and by the freeze to stop them
	mu     sync.Mutex // guards data
	data   []byte
	log    *fakeLog
	frozen []byte // the content at the freeze point
	thawed bool
}

// isFrozen reports whether the freeze has begun and not ended.
func (d *device) isFrozen() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.frozen != nil && !d.thawed
}

func (d *device) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return copy(p, d.data[off:]), nil
}

func (d *device) write(rng *rand.Rand) {
	d.gate.Lock()
	defer d.gate.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	blk := rng.IntN(len(d.data) / blockSize)
	n := 1 + rng.IntN(4)
	if (blk+n)*blockSize > len(d.data) {
		n = len(d.data)/blockSize - blk
	}
	for i := blk * blockSize; i < (blk+n)*blockSize; i++ {
		d.data[i] = byte(rng.Uint32())
	}
	d.log.record(blk, n)
}

func (d *device) freeze(ctx context.Context, critical func(context.Context) error) (time.Duration, error) {
	d.gate.Lock()
	defer d.gate.Unlock()
	d.mu.Lock()
	d.frozen = bytes.Clone(d.data)
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.thawed = true
		d.mu.Unlock()
	}()
	start := time.Now()
	err := critical(ctx)
	return time.Since(start), err
}

// fakeLog keeps, per block, the newest epoch that wrote it.
type fakeLog struct {
	mu         sync.Mutex
	epoch      uint64
	dirty      map[int]uint64
	incomplete string
}

func newFakeLog() *fakeLog { return &fakeLog{epoch: 1, dirty: map[int]uint64{}} }

func (l *fakeLog) record(blk, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for b := blk; b < blk+n; b++ {
		l.dirty[b] = l.epoch
	}
}

func (l *fakeLog) Flush(context.Context) error { return nil }

func (l *fakeLog) Cut() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.epoch++
	return l.epoch - 1
}

func (l *fakeLog) Pending(upTo uint64) []Extent {
	l.mu.Lock()
	defer l.mu.Unlock()
	var es []Extent
	for b, e := range l.dirty {
		if e <= upTo {
			es = append(es, Extent{int64(b) * blockSize, blockSize})
		}
	}
	return es
}

func (l *fakeLog) Acknowledge(es []Extent, upTo uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range es {
		for off := e.Offset; off < e.Offset+e.Length; off += blockSize {
			if ep, ok := l.dirty[int(off/blockSize)]; ok && ep <= upTo {
				delete(l.dirty, int(off/blockSize))
			}
		}
	}
}

func (l *fakeLog) Complete() (bool, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.incomplete == "", l.incomplete
}

// memSink is a target that keeps what was flushed apart from what was
// only written, and can be told to fail.
type memSink struct {
	mu              sync.Mutex
	written, stable []byte
	failAfter       int // fail the write after this many (0: never)
	writes          int
}

func (s *memSink) WriteAt(_ context.Context, p []byte, off int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	if s.failAfter > 0 && s.writes > s.failAfter {
		return errors.New("connection reset")
	}
	copy(s.written[off:], p)
	return nil
}

func (s *memSink) Flush(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	copy(s.stable, s.written)
	return nil
}

func newDevice(size int, seed uint64) *device {
	d := &device{data: make([]byte, size), log: newFakeLog()}
	rng := rand.New(rand.NewPCG(seed, 1))
	for i := range d.data {
		d.data[i] = byte(rng.Uint32())
	}
	return d
}

// runWhileWriting runs the engine while a goroutine keeps writing.
func runWhileWriting(t *testing.T, d *device, sink *memSink, initial []Extent, o Options) (Result, error) {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(7, 7))
		for {
			select {
			case <-stop:
				return
			default:
				d.write(rng)
			}
		}
	}()
	res, err := Run(context.Background(), d, sink, d.log, d.freeze, initial, o)
	close(stop)
	wg.Wait()
	return res, err
}

func TestFullBackupMatchesTheFreezePoint(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		const size = 4 << 20
		d := newDevice(size, seed)
		sink := &memSink{written: make([]byte, size), stable: make([]byte, size)}
		res, err := runWhileWriting(t, d, sink, []Extent{{0, size}}, Options{ChunkSize: 64 << 10, ConvergeBytes: 64 << 10})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(sink.stable, d.frozen) {
			t.Fatalf("seed %d: target differs from the device at the freeze point (passes %d)", seed, res.Passes)
		}
		if res.Passes < 2 || res.BytesSent < size {
			t.Fatalf("seed %d: %+v: want a live pass and a frozen one covering the device", seed, res)
		}
	}
}

func TestIncrementalCopiesOnlyPendingChanges(t *testing.T) {
	const size = 4 << 20
	d := newDevice(size, 3)
	sink := &memSink{written: bytes.Clone(d.data), stable: bytes.Clone(d.data)}
	// Writes since the last backup: 10 blocks.
	rng := rand.New(rand.NewPCG(9, 9))
	for range 10 {
		d.write(rng)
	}
	pending := total(mergeExtents(d.log.Pending(d.log.epoch)))
	res, err := Run(context.Background(), d, sink, d.log, d.freeze, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sink.stable, d.frozen) {
		t.Fatal("target differs from the device")
	}
	if res.BytesSent != pending || !res.Converged {
		t.Fatalf("sent %d bytes, pending were %d; result %+v", res.BytesSent, pending, res)
	}
	if left := d.log.Pending(d.log.epoch); len(left) != 0 {
		t.Fatalf("%d extents still pending after a successful backup", len(left))
	}
}

func TestFailedPassLosesNothing(t *testing.T) {
	const size = 2 << 20
	d := newDevice(size, 5)
	sink := &memSink{written: make([]byte, size), stable: make([]byte, size), failAfter: 10}
	rng := rand.New(rand.NewPCG(2, 2))
	for range 50 {
		d.write(rng)
	}
	before := len(d.log.Pending(d.log.epoch))
	if _, err := Run(context.Background(), d, sink, d.log, d.freeze, nil, Options{ChunkSize: 4096}); err == nil {
		t.Fatal("a failing target did not fail the run")
	}
	if after := len(d.log.Pending(d.log.epoch)); after != before {
		t.Fatalf("a failed pass dropped changes: %d pending before, %d after", before, after)
	}
	// The retry against a working target produces the exact image.
	sink.failAfter = 0
	if _, err := Run(context.Background(), d, sink, d.log, d.freeze, []Extent{{0, size}}, Options{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sink.stable, d.frozen) {
		t.Fatal("target differs from the device after the retry")
	}
}

func TestNonConvergingWritesFreezeAnyway(t *testing.T) {
	const size = 4 << 20
	d := newDevice(size, 11)
	sink := &memSink{written: make([]byte, size), stable: make([]byte, size)}
	// A writer that writes at every epoch boundary until the freeze never
	// lets the pending set shrink to ConvergeBytes of one byte, however
	// the goroutines are scheduled.
	log := &busyLog{fakeLog: d.log, d: d, rng: rand.New(rand.NewPCG(4, 4))}
	res, err := Run(context.Background(), d, sink, log, d.freeze, []Extent{{0, size}}, Options{ConvergeBytes: 1, MaxLivePasses: 3, ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if res.Converged || res.Passes != 4 {
		t.Fatalf("result %+v: want 3 live passes, not converged, then the frozen one", res)
	}
	if !bytes.Equal(sink.stable, d.frozen) {
		t.Fatal("target differs from the freeze point")
	}
}

// busyLog writes a few blocks of its device each time an epoch is cut
// while the device is not frozen: a writer that never pauses, without
// depending on the scheduler.
type busyLog struct {
	*fakeLog
	d   *device
	rng *rand.Rand
}

func (l *busyLog) Cut() uint64 {
	if !l.d.isFrozen() {
		for range 8 {
			l.d.write(l.rng)
		}
	}
	return l.fakeLog.Cut()
}

func TestLostEventsFailTheRun(t *testing.T) {
	d := newDevice(1<<20, 1)
	d.log.incomplete = "trace buffer overrun on cpu1"
	sink := &memSink{written: make([]byte, 1<<20), stable: make([]byte, 1<<20)}
	_, err := Run(context.Background(), d, sink, d.log, d.freeze, []Extent{{0, 1 << 20}}, Options{})
	if !errors.Is(err, ErrIncomplete) {
		t.Fatalf("err %v, want ErrIncomplete", err)
	}
}

func TestMergeExtents(t *testing.T) {
	got := mergeExtents([]Extent{{100, 10}, {0, 10}, {10, 5}, {50, 0}, {105, 20}, {200, 1}})
	want := []Extent{{0, 15}, {100, 25}, {200, 1}}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}

// A freeze target the target's speed cannot meet keeps the engine copying
// live, instead of freezing once ConvergeBytes is reached.
func TestFreezeTargetShrinksTheThreshold(t *testing.T) {
	const size = 1 << 20
	for _, target := range []time.Duration{0, time.Nanosecond} {
		d := newDevice(size, 13)
		sink := &memSink{written: make([]byte, size), stable: make([]byte, size)}
		log := &busyLog{fakeLog: d.log, d: d, rng: rand.New(rand.NewPCG(5, 5))}
		// Default ConvergeBytes (64 MiB) covers every pending set here.
		res, err := Run(context.Background(), d, sink, log, d.freeze, []Extent{{0, size}}, Options{FreezeTarget: target, MaxLivePasses: 3, ChunkSize: 4096})
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case target == 0 && (!res.Converged || res.Passes != 2):
			t.Fatalf("no freeze target: %+v, want convergence after one live pass", res)
		case target > 0 && (res.Converged || res.Passes != 4):
			t.Fatalf("freeze target %v: %+v, want three live passes, then the frozen one", target, res)
		}
		if !bytes.Equal(sink.stable, d.frozen) {
			t.Fatal("target differs from the freeze point")
		}
	}
}
