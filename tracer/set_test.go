package tracer

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
)

// model is the obvious implementation: a map from block to the set of
// epochs it is pending in.
type model struct {
	bs, size int64
	open     uint64
	pending  map[int64]map[uint64]bool
}

func newModel(size, bs int64) *model {
	return &model{bs: bs, size: size, open: 1, pending: map[int64]map[uint64]bool{}}
}

func (m *model) add(off, length int64) {
	if length <= 0 {
		return
	}
	for b := max(off, 0) / m.bs; b*m.bs < min(off+length, m.size); b++ {
		if m.pending[b] == nil {
			m.pending[b] = map[uint64]bool{}
		}
		m.pending[b][m.open] = true
	}
}

func (m *model) ack(es []Extent, upTo uint64) {
	for _, e := range es {
		if e.Length <= 0 {
			continue
		}
		for b := max(e.Offset, 0) / m.bs; b*m.bs < min(e.End(), m.size); b++ {
			for ep := range m.pending[b] {
				if ep <= upTo {
					delete(m.pending[b], ep)
				}
			}
			if len(m.pending[b]) == 0 {
				delete(m.pending, b)
			}
		}
	}
}

func (m *model) blocks(upTo uint64) []int64 {
	var out []int64
	for b, eps := range m.pending {
		for ep := range eps {
			if ep <= upTo {
				out = append(out, b)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

func extentBlocks(t *testing.T, es []Extent, bs, size int64) []int64 {
	t.Helper()
	var out []int64
	for i, e := range es {
		if e.Length <= 0 || e.Offset%bs != 0 || (e.End()%bs != 0 && e.End() != size) || e.End() > size {
			t.Fatalf("extent %d %+v misaligned or past %d", i, e, size)
		}
		if i > 0 && es[i-1].End() >= e.Offset {
			t.Fatalf("extents %+v and %+v not merged or not sorted", es[i-1], e)
		}
		for b := e.Offset / bs; b*bs < e.End(); b++ {
			out = append(out, b)
		}
	}
	return out
}

func TestSetAgainstModel(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int64
		bs   int
	}{
		{"small-odd-size", 10*4096 + 1000, 4096},
		{"three-chunks", 3*chunkBits*512 - 512*7, 512},
		{"large", 1 << 40, 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, uint64(tc.size)))
			s := NewSet(tc.size, tc.bs)
			m := newModel(tc.size, int64(tc.bs))
			span := min(tc.size, 4*chunkBits*int64(tc.bs))
			randExtent := func() Extent {
				off := rng.Int64N(span+1000) - 500
				var l int64
				switch rng.IntN(4) {
				case 0:
					l = rng.Int64N(2 * int64(tc.bs))
				case 1:
					l = rng.Int64N(chunkBits * int64(tc.bs) * 2)
				default:
					l = rng.Int64N(64 * int64(tc.bs))
				}
				return Extent{off, l}
			}
			for step := 0; step < 400; step++ {
				switch r := rng.IntN(100); {
				case r < 60:
					e := randExtent()
					s.Add(e.Offset, e.Length)
					m.add(e.Offset, e.Length)
				case r < 70:
					if got, want := s.Cut(), m.open; got != want {
						t.Fatalf("Cut = %d, want %d", got, want)
					}
					m.open++
				default:
					upTo := uint64(rng.Int64N(int64(m.open) + 1))
					es := []Extent{randExtent(), randExtent()}
					if rng.IntN(3) == 0 {
						es = s.Pending(upTo) // acknowledge a whole pass
					}
					s.Acknowledge(es, upTo)
					m.ack(es, upTo)
				}
				if step%50 == 0 || step == 399 {
					for _, upTo := range []uint64{0, m.open / 2, m.open - 1, m.open} {
						got := extentBlocks(t, s.Pending(upTo), int64(tc.bs), tc.size)
						want := m.blocks(upTo)
						if !slices.Equal(got, want) {
							t.Fatalf("step %d: Pending(%d) has %d blocks, model %d", step, upTo, len(got), len(want))
						}
						if c := s.Count(upTo); c != int64(len(want)) {
							t.Fatalf("Count(%d) = %d, want %d", upTo, c, len(want))
						}
					}
				}
			}
		})
	}
}

func TestSetLaterWriteSurvivesAcknowledge(t *testing.T) {
	s := NewSet(1<<20, 4096)
	s.Add(0, 8192) // epoch 1
	n := s.Cut()
	pass := s.Pending(n)
	s.Add(4096, 10) // epoch 2, while the pass copies
	s.Acknowledge(pass, n)
	if got := s.Pending(n); len(got) != 0 {
		t.Fatalf("Pending(%d) after acknowledge = %v", n, got)
	}
	want := []Extent{{4096, 4096}}
	if got := s.Pending(s.Cut()); !slices.Equal(got, want) {
		t.Fatalf("later write: Pending = %v, want %v", got, want)
	}
}

func TestSetFailedPassLosesNothing(t *testing.T) {
	s := NewSet(1<<30, 4096)
	s.Add(123456, 999999)
	n := s.Cut()
	before := s.Pending(n)
	// A pass that copied half and failed acknowledges nothing.
	s.Add(1<<29, 4096)
	m := s.Cut()
	if got := s.Pending(n); !slices.Equal(got, before) {
		t.Fatalf("Pending(%d) changed to %v, want %v", n, got, before)
	}
	if got := s.Pending(m); len(got) != 2 {
		t.Fatalf("Pending(%d) = %v, want the old range and the new block", m, got)
	}
}

func TestSetFullChunks(t *testing.T) {
	size := int64(5*chunkBits*4096 + 4096*3)
	s := NewSet(size, 4096)
	s.Add(0, size)
	if got := s.Pending(1); !slices.Equal(got, []Extent{{0, size}}) {
		t.Fatalf("Pending = %v", got)
	}
	s.Acknowledge([]Extent{{chunkBits * 4096, 4096}}, 1) // split a full chunk
	want := []Extent{{0, chunkBits * 4096}, {chunkBits*4096 + 4096, size - chunkBits*4096 - 4096}}
	if got := s.Pending(1); !slices.Equal(got, want) {
		t.Fatalf("Pending = %v, want %v", got, want)
	}
	if fullChunk.n != chunkBits {
		t.Fatal("the shared full chunk was modified")
	}
	for _, w := range fullChunk.w {
		if w != ^uint64(0) {
			t.Fatal("the shared full chunk was modified")
		}
	}
}

func TestSetMemoryOneTiB(t *testing.T) {
	// Every other block of the first 1 GiB and one block per 128 MiB
	// elsewhere: chunks are allocated only where writes fell.
	s := NewSet(1<<40, 4096)
	for off := int64(0); off < 1<<30; off += 8192 {
		s.Add(off, 4096)
	}
	for off := int64(1 << 30); off < 1<<40; off += 128 << 20 {
		s.Add(off, 1)
	}
	b := s.epochs[1]
	var bitmapBytes int
	for _, c := range b.chunks {
		if c != fullChunk {
			bitmapBytes += chunkWords * 8
		}
	}
	// 8 chunks for the first GiB, one per remaining 128 MiB.
	if want := (8 + 8192 - 8) * chunkWords * 8; bitmapBytes != want || bitmapBytes > 32<<20 {
		t.Fatalf("bitmap bytes %d, want %d (≤ 32 MiB)", bitmapBytes, want)
	}
	s.Add(0, 1<<40)
	for _, c := range s.epochs[1].chunks {
		if c != fullChunk {
			t.Fatal("a fully written device still holds bitmap chunks")
		}
	}
}

func TestSetMergeAndCompleteness(t *testing.T) {
	a := NewSet(1<<24, 4096)
	b := NewSet(1<<24, 4096)
	a.Add(0, 4096)
	b.Add(8192, 4096)
	b.Cut()
	b.Add(1<<23, 1)
	b.MarkIncomplete("ring overrun on cpu1")
	if err := a.Merge(b); err != nil {
		t.Fatal(err)
	}
	want := []Extent{{0, 4096}, {8192, 4096}, {1 << 23, 4096}}
	if got := a.Pending(a.Epoch()); !slices.Equal(got, want) {
		t.Fatalf("merged = %v, want %v", got, want)
	}
	if ok, why := a.Complete(); ok || why == "" {
		t.Fatalf("merged set complete=%v %q, want incomplete with a reason", ok, why)
	}
	if err := a.Merge(NewSet(1<<25, 4096)); !errors.Is(err, ErrGeometry) {
		t.Fatalf("merge of different geometry: %v", err)
	}

	// A loss detected after the cut is not repaired by a backup of that cut.
	s := NewSet(1<<20, 4096)
	s.MarkIncomplete("lost before cut")
	n := s.Cut()
	s.MarkIncomplete("lost after cut")
	s.MarkComplete(n)
	if ok, _ := s.Complete(); ok {
		t.Fatal("a loss in a later epoch was forgotten")
	}
	s.MarkComplete(s.Cut())
	if ok, why := s.Complete(); !ok || why != "" {
		t.Fatalf("Complete = %v %q after a covering backup", ok, why)
	}
}

func sampleSet() *Set {
	s := NewSet(3*chunkBits*4096+12345, 4096)
	s.Add(0, chunkBits*4096) // a full chunk
	s.Add(chunkBits*4096+4096*7, 3)
	s.Cut()
	s.Add(3*chunkBits*4096, 12345) // the partial last chunk
	s.MarkIncomplete("test loss")
	s.Cut()
	s.Add(999999, 1)
	return s
}

func TestSetRoundTrip(t *testing.T) {
	s := sampleSet()
	var buf bytes.Buffer
	n, err := s.WriteTo(&buf)
	if err != nil || n != int64(buf.Len()) {
		t.Fatalf("WriteTo = %d, %v; wrote %d", n, err, buf.Len())
	}
	r, err := ReadSet(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if r.Epoch() != s.Epoch() || r.Size() != s.Size() || r.BlockSize() != s.BlockSize() {
		t.Fatalf("geometry or epoch differ: %d/%d/%d vs %d/%d/%d", r.Epoch(), r.Size(), r.BlockSize(), s.Epoch(), s.Size(), s.BlockSize())
	}
	for upTo := uint64(0); upTo <= s.Epoch(); upTo++ {
		if got, want := r.Pending(upTo), s.Pending(upTo); !slices.Equal(got, want) {
			t.Fatalf("Pending(%d) = %v, want %v", upTo, got, want)
		}
	}
	ok1, why1 := s.Complete()
	ok2, why2 := r.Complete()
	if ok1 != ok2 || why1 != why2 {
		t.Fatalf("Complete = %v %q, want %v %q", ok2, why2, ok1, why1)
	}
}

func TestReadSetRejectsDamage(t *testing.T) {
	var buf bytes.Buffer
	if _, err := sampleSet().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	for i := 0; i < len(good); i += 1 + i/16 {
		bad := bytes.Clone(good)
		bad[i] ^= 0x41
		if _, err := ReadSet(bytes.NewReader(bad)); !errors.Is(err, ErrCorruptSet) {
			t.Fatalf("byte %d flipped: err = %v, want ErrCorruptSet", i, err)
		}
	}
	for _, n := range []int{0, 7, 20, len(good) / 2, len(good) - 1} {
		if _, err := ReadSet(bytes.NewReader(good[:n])); !errors.Is(err, ErrCorruptSet) {
			t.Fatalf("truncated to %d: err = %v, want ErrCorruptSet", n, err)
		}
	}
}

func FuzzReadSet(f *testing.F) {
	var buf bytes.Buffer
	sampleSet().WriteTo(&buf)
	f.Add(buf.Bytes())
	buf.Reset()
	NewSet(1<<20, 512).WriteTo(&buf)
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ReadSet(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrCorruptSet) {
				t.Fatalf("error %v does not wrap ErrCorruptSet", err)
			}
			return
		}
		// A set that reads back must write back identically.
		var out bytes.Buffer
		if _, err := s.WriteTo(&out); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), data[:out.Len()]) {
			t.Fatal("re-serialised set differs")
		}
		s.Pending(s.Epoch())
	})
}
