package nbd

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
)

// halfZeroImage returns size bytes where about half the 64 KiB blocks, in
// runs, are zero.
func halfZeroImage(seed uint64, size int) []byte {
	b := randBytes(seed, size)
	r := rand.New(rand.NewPCG(seed, 1))
	for off := 0; off < size; {
		n := (1 + r.IntN(16)) * 64 << 10
		if r.IntN(2) == 0 {
			clear(b[off:min(size, off+n)])
		}
		off += n
	}
	return b
}

// writeAll writes src to the sink in pieces of random sizes (multiples of
// 4 KiB), calling after() between pieces.
func writeAll(t *testing.T, ctx context.Context, s *Sink, src []byte, seed uint64, after func()) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 2))
	for off := 0; off < len(src); {
		n := min(len(src)-off, (1+r.IntN(512))*4096)
		if err := s.WriteAt(ctx, src[off:off+n], int64(off)); err != nil {
			t.Fatalf("WriteAt(%d+%d): %v", off, n, err)
		}
		off += n
		if after != nil {
			after()
		}
	}
}

func checkImage(t *testing.T, image string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("image differs from the source at byte %d", i)
	}
}

// durableChecker verifies, each time the sink reports extents durable, that
// the server's file holds the source's bytes there.
type durableChecker struct {
	t      *testing.T
	image  string
	src    []byte
	failed error
	count  int
}

func (d *durableChecker) onDurable(es []Extent) {
	f, err := os.Open(d.image)
	if err != nil {
		d.failed = err
		return
	}
	defer f.Close()
	for _, e := range es {
		d.count++
		buf := make([]byte, e.Length)
		if _, err := f.ReadAt(buf, e.Offset); err != nil {
			d.failed = err
			return
		}
		if i := firstDiff(buf, d.src[e.Offset:e.End()]); i >= 0 && d.failed == nil {
			d.failed = fmt.Errorf("extent %d+%d reported durable but differs at %d", e.Offset, e.Length, e.Offset+int64(i))
		}
	}
}

// checkDurable checks the whole reported durable set against the file.
func (d *durableChecker) checkDurable(s *Sink) {
	d.onDurable(s.Durable())
	if d.failed != nil {
		d.t.Fatal(d.failed)
	}
}

func TestSinkZeroModes(t *testing.T) {
	const size = 16 << 20
	src := halfZeroImage(7, size)
	for _, mode := range []ZeroMode{ZeroWrite, ZeroAllocate, ZeroTrim, ZeroSkip} {
		t.Run(fmt.Sprint(mode), func(t *testing.T) {
			o := testenv.NBDOptions{Size: size}
			if mode == ZeroTrim {
				// qemu-nbd ignores TRIM unless told to punch holes.
				o.Args = []string{"--discard=unmap"}
			}
			srv := testenv.StartNBD(t, testenv.QemuNBD, o)
			if mode != ZeroSkip {
				// Non-zero garbage the zero blocks must overwrite.
				if err := os.WriteFile(srv.Image, randBytes(99, size), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			ctx := testCtx(t)
			dc := &durableChecker{t: t, image: srv.Image, src: src}
			s, err := NewSink(ctx, srv.URI, SinkOptions{Zero: mode, MaxUnflushed: 4 << 20, OnDurable: dc.onDurable})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			writeAll(t, ctx, s, src, uint64(mode), nil)
			if err := s.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if dc.failed != nil {
				t.Fatal(dc.failed)
			}
			if d := s.Durable(); len(d) != 1 || d[0] != (Extent{0, size}) {
				t.Fatalf("durable %v, want the whole export", d)
			}
			if dc.count < 2 {
				t.Errorf("OnDurable called for %d extents; MaxUnflushed should have forced intermediate flushes", dc.count)
			}
			checkImage(t, srv.Image, src)
		})
	}
}

func TestSinkOverwrite(t *testing.T) {
	srv := testenv.StartNBD(t, testenv.Nbdkit, testenv.NBDOptions{Size: 4 << 20})
	ctx := testCtx(t)
	s, err := NewSink(ctx, srv.URI, SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := make([]byte, 4<<20)
	// The same blocks rewritten many times while earlier writes are in
	// flight: the last write must win.
	for i := 0; i < 64; i++ {
		p := randBytes(uint64(i), 256<<10)
		off := int64(i%4) * 128 << 10
		copy(want[off:], p)
		if err := s.WriteAt(ctx, p, off); err != nil {
			t.Fatal(err)
		}
		if i == 40 {
			if err := s.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if len(s.Durable()) == 0 {
				t.Fatal("nothing durable after Flush")
			}
		}
	}
	if got := s.Durable(); len(got) != 0 {
		t.Fatalf("rewritten blocks still reported durable: %v", got)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	checkImage(t, srv.Image, want)
}

// TestSinkSourceFlushesInBackground: with a Source the sink holds no
// copies and flushes only every 4×MaxUnflushed bytes, and at Flush.
func TestSinkSourceFlushesInBackground(t *testing.T) {
	const size = 48 << 20
	srv := testenv.StartNBD(t, testenv.QemuNBD, testenv.NBDOptions{Size: size})
	src := randBytes(21, size)
	ctx := testCtx(t)
	dc := &durableChecker{t: t, image: srv.Image, src: src}
	s, err := NewSink(ctx, srv.URI, SinkOptions{Source: bytes.NewReader(src), MaxUnflushed: 4 << 20, OnDurable: dc.onDurable})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	writeAll(t, ctx, s, src, 8, nil)
	if dc.count == 0 {
		t.Error("no background flush after 48 MiB with a 16 MiB bound")
	}
	if s.buffered != 0 {
		t.Errorf("%d bytes of copies held with a Source", s.buffered)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if dc.failed != nil {
		t.Fatal(dc.failed)
	}
	checkImage(t, srv.Image, src)
}

// TestSinkCancelledWrite: a WriteAt cut short by its context leaves writes
// queued but unsent; a later Flush sends them.
func TestSinkCancelledWrite(t *testing.T) {
	ts := startOurServer(t, 4<<20, false, nil)
	ctx := testCtx(t)
	for _, source := range []bool{false, true} {
		src := randBytes(31, 4<<20)
		o := SinkOptions{}
		if source {
			o.Source = bytes.NewReader(src)
		}
		s, err := NewSink(ctx, ts.URI, o)
		if err != nil {
			t.Fatal(err)
		}
		// Queue a write the way a cancelled WriteAt leaves it: pending,
		// not sent.
		s.mu.Lock()
		w := &sinkWrite{off: 0, n: 1 << 20, cmd: cmdWrite}
		if !source {
			w.data = append([]byte(nil), src[:1<<20]...)
		}
		s.pending = append(s.pending, w)
		s.mu.Unlock()
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := s.WriteAt(cctx, src[1<<20:], 1<<20); err == nil {
			t.Fatal("WriteAt with a cancelled context succeeded")
		}
		if err := s.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.WriteAt(ctx, src[1<<20:], 1<<20); err != nil {
			t.Fatal(err)
		}
		if err := s.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		checkImage(t, ts.Image, src)
		s.Close()
	}
}

// TestSinkWriteZeroes: ranges the caller knows are zero follow the zero
// mode without data, and count as durable after Flush.
func TestSinkWriteZeroes(t *testing.T) {
	for _, mode := range []ZeroMode{ZeroWrite, ZeroSkip} {
		ts := startOurServer(t, 4<<20, false, nil)
		ctx := testCtx(t)
		src := randBytes(41, 4<<20)
		s, err := NewSink(ctx, ts.URI, SinkOptions{Zero: mode})
		if err != nil {
			t.Fatal(err)
		}
		if mode == ZeroWrite {
			// Data first, so that the zeroes have something to replace.
			if err := s.WriteAt(ctx, src, 0); err != nil {
				t.Fatal(err)
			}
		} else {
			if err := s.WriteAt(ctx, src[:1<<20], 0); err != nil {
				t.Fatal(err)
			}
			if err := s.WriteAt(ctx, src[2<<20:], 2<<20); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.WriteZeroes(ctx, 1<<20, 1<<20); err != nil {
			t.Fatal(err)
		}
		clear(src[1<<20 : 2<<20])
		if err := s.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if d := s.Durable(); len(d) != 1 || d[0] != (Extent{0, 4 << 20}) {
			t.Fatalf("mode %d: durable %v", mode, d)
		}
		checkImage(t, ts.Image, src)
		if err := s.WriteZeroes(ctx, 4<<20-4096, 8192); err == nil {
			t.Fatal("zeroes past the end accepted")
		}
		s.Close()
	}
}
