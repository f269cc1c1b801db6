package tracer

import (
	"math/bits"
	"slices"
)

// A bitmap is a sparse two-level bitmap of block numbers. The top level is a
// map from chunk index to chunk, so an untouched region costs nothing and a
// corrupt device size read from disk cannot make us allocate a huge table.
// A chunk holds chunkBits bits (4 KiB of bitmap, 128 MiB of device at 4 KiB
// blocks); a chunk whose every bit is set is replaced by the shared fullChunk
// so a fully written device costs only the top level. A 1 TiB device at
// 4 KiB blocks therefore needs at most 32 MiB of chunks plus 8192 map
// entries, and far less when the writes are clustered.
type bitmap struct {
	chunks map[uint32]*chunk
}

const (
	chunkShift = 15
	chunkBits  = 1 << chunkShift // blocks per chunk
	chunkWords = chunkBits / 64
)

type chunk struct {
	w [chunkWords]uint64
	n int // bits set
}

// fullChunk is shared by every completely set chunk and never modified.
var fullChunk = func() *chunk {
	c := &chunk{n: chunkBits}
	for i := range c.w {
		c.w[i] = ^uint64(0)
	}
	return c
}()

func newBitmap() *bitmap { return &bitmap{chunks: make(map[uint32]*chunk)} }

func (b *bitmap) empty() bool { return len(b.chunks) == 0 }

// chunkSpans splits blocks [start, end) at chunk boundaries and calls fn
// with each chunk's index and the bits [lo, hi) of it the range covers.
func chunkSpans(start, end uint64, fn func(ci uint32, lo, hi uint64)) {
	for start < end {
		lo := start & (chunkBits - 1)
		hi := uint64(chunkBits)
		if rest := end - (start - lo); rest < hi {
			hi = rest
		}
		fn(uint32(start>>chunkShift), lo, hi)
		start += hi - lo
	}
}

// setRange sets blocks [start, end).
func (b *bitmap) setRange(start, end uint64) {
	chunkSpans(start, end, func(ci uint32, lo, hi uint64) {
		c := b.chunks[ci]
		switch {
		case c == fullChunk:
		case lo == 0 && hi == chunkBits:
			b.chunks[ci] = fullChunk
		default:
			if c == nil {
				c = &chunk{}
				b.chunks[ci] = c
			}
			c.set(lo, hi)
			if c.n == chunkBits {
				b.chunks[ci] = fullChunk
			}
		}
	})
}

// clearRange clears blocks [start, end).
func (b *bitmap) clearRange(start, end uint64) {
	chunkSpans(start, end, func(ci uint32, lo, hi uint64) {
		c := b.chunks[ci]
		switch {
		case c == nil:
		case lo == 0 && hi == chunkBits:
			delete(b.chunks, ci)
		default:
			if c == fullChunk {
				c = &chunk{}
				*c = *fullChunk
				b.chunks[ci] = c
			}
			c.clear(lo, hi)
			if c.n == 0 {
				delete(b.chunks, ci)
			}
		}
	})
}

// or adds every bit of o to b.
func (b *bitmap) or(o *bitmap) {
	for ci, oc := range o.chunks {
		c := b.chunks[ci]
		switch {
		case c == fullChunk:
		case oc == fullChunk:
			b.chunks[ci] = fullChunk
		case c == nil:
			nc := *oc
			b.chunks[ci] = &nc
		default:
			n := 0
			for i := range c.w {
				c.w[i] |= oc.w[i]
				n += bits.OnesCount64(c.w[i])
			}
			c.n = n
			if n == chunkBits {
				b.chunks[ci] = fullChunk
			}
		}
	}
}

// count returns the number of set bits.
func (b *bitmap) count() int64 {
	var n int64
	for _, c := range b.chunks {
		n += int64(c.n)
	}
	return n
}

func (b *bitmap) sortedKeys() []uint32 {
	keys := make([]uint32, 0, len(b.chunks))
	for k := range b.chunks {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func (c *chunk) set(lo, hi uint64) {
	for i := lo; i < hi; {
		w, bit := i/64, i%64
		if bit == 0 && hi-i >= 64 {
			c.n += 64 - bits.OnesCount64(c.w[w])
			c.w[w] = ^uint64(0)
			i += 64
			continue
		}
		m := uint64(1) << bit
		if c.w[w]&m == 0 {
			c.w[w] |= m
			c.n++
		}
		i++
	}
}

func (c *chunk) clear(lo, hi uint64) {
	for i := lo; i < hi; {
		w, bit := i/64, i%64
		if bit == 0 && hi-i >= 64 {
			c.n -= bits.OnesCount64(c.w[w])
			c.w[w] = 0
			i += 64
			continue
		}
		m := uint64(1) << bit
		if c.w[w]&m != 0 {
			c.w[w] &^= m
			c.n--
		}
		i++
	}
}

// runs calls fn for every maximal run of set bits [start, end) in block
// order, across chunk boundaries.
func runsOf(maps []*bitmap, fn func(start, end uint64) bool) {
	// Union of the chunk keys of every map.
	keySet := make(map[uint32]struct{})
	for _, m := range maps {
		for k := range m.chunks {
			keySet[k] = struct{}{}
		}
	}
	keys := make([]uint32, 0, len(keySet))
	for k := range keySet {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var runStart, runEnd uint64
	open := false
	emit := func(s, e uint64) bool {
		if open && s == runEnd {
			runEnd = e
			return true
		}
		if open && !fn(runStart, runEnd) {
			return false
		}
		runStart, runEnd, open = s, e, true
		return true
	}
	var words [chunkWords]uint64
	for _, k := range keys {
		base := uint64(k) << chunkShift
		full := false
		clear(words[:])
		for _, m := range maps {
			c := m.chunks[k]
			if c == nil {
				continue
			}
			if c == fullChunk {
				full = true
				break
			}
			for i := range words {
				words[i] |= c.w[i]
			}
		}
		if full {
			if !emit(base, base+chunkBits) {
				return
			}
			continue
		}
		for i := 0; i < chunkBits; {
			w := words[i/64] >> (i % 64)
			if w == 0 {
				i += 64 - i%64
				continue
			}
			i += bits.TrailingZeros64(w)
			j := i
			for j < chunkBits {
				w := ^words[j/64] >> (j % 64)
				if w == 0 {
					j += 64 - j%64
					continue
				}
				j += bits.TrailingZeros64(w)
				break
			}
			if j > chunkBits {
				j = chunkBits
			}
			if !emit(base+uint64(i), base+uint64(j)) {
				return
			}
			i = j
		}
	}
	if open {
		fn(runStart, runEnd)
	}
}
