package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/blockimage/blockimage/examples/linuxagent/internal/engine"
)

// The fake platform: an in-memory disk whose writer reports every write to
// the tracers attached to it, as the kernel does, a freeze that stops the
// writer, and in-memory targets. It tests the agent's decisions without
// root; the integration tests run the same code on loop devices.

const fakeBlock = 4096

type fakeDisk struct {
	gate    sync.Mutex // held by the writer per write, and by a freeze
	mu      sync.Mutex
	data    []byte
	tracers map[*fakeTracer]bool
	writes  uint64 // sectors, the kernel's write counter
	frozen  []byte // content at the last freeze point
}

func newFakeDisk(size int, seed uint64) *fakeDisk {
	d := &fakeDisk{data: make([]byte, size), tracers: map[*fakeTracer]bool{}}
	rng := rand.New(rand.NewPCG(seed, 3))
	for i := range d.data {
		d.data[i] = byte(rng.Uint32())
	}
	return d
}

// write changes 1-4 random blocks and returns the blocks written.
func (d *fakeDisk) write(rng *rand.Rand) []int {
	d.gate.Lock()
	defer d.gate.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	nblk := len(d.data) / fakeBlock
	blk, n := rng.IntN(nblk), 1+rng.IntN(4)
	n = min(n, nblk-blk)
	var out []int
	for b := blk; b < blk+n; b++ {
		for i := b * fakeBlock; i < (b+1)*fakeBlock; i++ {
			d.data[i] = byte(rng.Uint32())
		}
		out = append(out, b)
		for t := range d.tracers {
			t.record(b)
		}
	}
	d.writes += uint64(n * fakeBlock / 512)
	return out
}

// writer writes until stop is closed.
func (d *fakeDisk) writer(seed uint64) (stop func()) {
	done, quit := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		rng := rand.New(rand.NewPCG(seed, 5))
		for {
			select {
			case <-quit:
				return
			default:
				d.write(rng)
				time.Sleep(50 * time.Microsecond) // pace, not synchronisation
			}
		}
	}()
	return func() { close(quit); <-done }
}

type fakeDev struct{ d *fakeDisk }

func (f fakeDev) ReadAt(p []byte, off int64) (int, error) {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if off >= int64(len(f.d.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.d.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
func (f fakeDev) Size() int64  { return int64(len(f.d.data)) }
func (f fakeDev) Close() error { return nil }

// fakeTracer keeps, per block, the newest epoch that wrote it.
type fakeTracer struct {
	d          *fakeDisk
	mu         sync.Mutex
	epoch      uint64
	dirty      map[int]uint64
	incomplete string
	// lossAtStop, when set, is a loss that only Stop's last drain finds.
	lossAtStop string
}

func (t *fakeTracer) record(b int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dirty[b] = t.epoch
}

func (t *fakeTracer) Flush(context.Context) error { return nil }
func (t *fakeTracer) Cut() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.epoch++
	return t.epoch - 1
}
func (t *fakeTracer) Pending(upTo uint64) []engine.Extent {
	t.mu.Lock()
	defer t.mu.Unlock()
	var es []engine.Extent
	for b, e := range t.dirty {
		if e <= upTo {
			es = append(es, engine.Extent{Offset: int64(b) * fakeBlock, Length: fakeBlock})
		}
	}
	return es
}
func (t *fakeTracer) Acknowledge(es []engine.Extent, upTo uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range es {
		for off := e.Offset; off < e.Offset+e.Length; off += fakeBlock {
			if ep, ok := t.dirty[int(off/fakeBlock)]; ok && ep <= upTo {
				delete(t.dirty, int(off/fakeBlock))
			}
		}
	}
}
func (t *fakeTracer) Complete() (bool, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.incomplete == "", t.incomplete
}
func (t *fakeTracer) Save(w io.Writer) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var blocks []int
	for b := range t.dirty {
		blocks = append(blocks, b)
	}
	return json.NewEncoder(w).Encode(blocks)
}
func (t *fakeTracer) Adopt(saved io.Reader) error {
	var blocks []int
	if err := json.NewDecoder(saved).Decode(&blocks); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, b := range blocks {
		if _, ok := t.dirty[b]; !ok {
			t.dirty[b] = t.epoch
		}
	}
	return nil
}

func (t *fakeTracer) CompleteAtStop() (bool, string) { return t.Complete() }

func (t *fakeTracer) Stop() error {
	t.d.mu.Lock()
	defer t.d.mu.Unlock()
	delete(t.d.tracers, t)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.lossAtStop != "" && t.incomplete == "" {
		t.incomplete = t.lossAtStop
	}
	return nil
}

// fakeTarget is an in-memory target that keeps the flushed image apart
// from what was only written.
type fakeTarget struct {
	mu              sync.Mutex
	written, stable []byte
}

func (t *fakeTarget) WriteAt(_ context.Context, p []byte, off int64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	copy(t.written[off:], p)
	return nil
}
func (t *fakeTarget) Flush(context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	copy(t.stable, t.written)
	return nil
}
func (t *fakeTarget) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return copy(p, t.written[off:]), nil
}
func (t *fakeTarget) Size() int64  { return int64(len(t.written)) }
func (t *fakeTarget) Close() error { return nil }

// fakeMachine is a platform over one fake disk at /dev/fake.
type fakeMachine struct {
	Platform
	disk    *fakeDisk
	mounted bool
	mu      sync.Mutex
	targets map[string]*fakeTarget
	tracers []*fakeTracer
}

const fakeDevice = "/dev/fake"

func newFakeMachine(size int, seed uint64) *fakeMachine {
	m := &fakeMachine{disk: newFakeDisk(size, seed), mounted: true, targets: map[string]*fakeTarget{}}
	m.Platform = Platform{
		Open: func(path string, write bool) (Device, error) {
			if path != fakeDevice {
				return nil, fmt.Errorf("no such device %s", path)
			}
			return fakeDev{m.disk}, nil
		},
		Mounts: func(string) ([]Mount, error) {
			if m.mounted {
				return []Mount{{MountPoint: "/mnt", FSType: "fakefs"}}, nil
			}
			return nil, nil
		},
		StartTracer: func(ctx context.Context, device string) (Tracer, error) {
			t := &fakeTracer{d: m.disk, epoch: 1, dirty: map[int]uint64{}}
			m.disk.mu.Lock()
			m.disk.tracers[t] = true
			m.disk.mu.Unlock()
			m.mu.Lock()
			m.tracers = append(m.tracers, t)
			m.mu.Unlock()
			return t, nil
		},
		Sequence: func(ctx context.Context, device string, deadline time.Duration, flushTracer func(context.Context) error, critical func(context.Context) error) (FreezeReport, error) {
			d := m.disk
			d.gate.Lock()
			defer d.gate.Unlock()
			d.mu.Lock()
			d.frozen = bytes.Clone(d.data)
			d.mu.Unlock()
			if flushTracer != nil {
				if err := flushTracer(ctx); err != nil {
					return FreezeReport{}, err
				}
			}
			start := time.Now()
			err := critical(ctx)
			return FreezeReport{Frozen: m.mounted, FrozenFor: time.Since(start)}, err
		},
		WriteCount: func(string) (uint64, error) {
			m.disk.mu.Lock()
			defer m.disk.mu.Unlock()
			return m.disk.writes, nil
		},
		OpenTarget: func(ctx context.Context, target string, src Device, diff bool) (Target, error) {
			size := src.Size()
			m.mu.Lock()
			defer m.mu.Unlock()
			t, ok := m.targets[target]
			if !ok {
				t = &fakeTarget{written: make([]byte, size), stable: make([]byte, size)}
				m.targets[target] = t
			}
			return t, nil
		},
	}
	return m
}

// lastTracer returns the newest tracer started.
func (m *fakeMachine) lastTracer() *fakeTracer {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.tracers[len(m.tracers)-1]
}

// exact reports whether the target's flushed image equals the disk at the
// last freeze point.
func (m *fakeMachine) exact(target string) bool {
	m.mu.Lock()
	t := m.targets[target]
	m.mu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	m.disk.mu.Lock()
	defer m.disk.mu.Unlock()
	return bytes.Equal(t.stable, m.disk.frozen)
}
