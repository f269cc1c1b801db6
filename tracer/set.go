package tracer

import (
	"errors"
	"fmt"
	"iter"
	"math/bits"
	"sync"
)

// An Extent is a byte range of the device.
type Extent struct {
	Offset, Length int64
}

// End returns the offset just past the extent.
func (e Extent) End() int64 { return e.Offset + e.Length }

// A Set is the set of blocks of one device that changed and have not yet
// been acknowledged as copied, grouped by epoch. It is safe for concurrent
// use.
//
// Epochs answer "what changed since backup N". Writes are recorded in the
// open epoch. [Set.Cut] closes it (the caller does this at its consistency
// point, after [Tracer.Flush], or with [Tracer.Cut] which does both) and
// returns its number; [Set.Pending] lists the blocks of the closed epochs
// up to a number; [Set.Acknowledge] removes blocks from those epochs once the
// backup target has made them durable. A block written again in a later
// epoch stays pending there, so acknowledging an old pass never hides a newer
// write, and a pass that fails simply never acknowledges: nothing is lost.
// (The original design removed ranges before copying them; a failed pass
// then lost changes. Here ranges leave only by Acknowledge.)
//
// Each epoch with pending blocks keeps its own sparse bitmap (see bitmap.go:
// at most one bit per block and 4 KiB per touched 128 MiB), so memory is
// bounded by the number of unacknowledged epochs, normally one or two.
//
// A Set also says whether it can be trusted: [Set.MarkIncomplete] records
// that changes may have been missed (lost trace events, a restart without a
// saved set, an unreadable partition map...), and [Set.Complete] reports it.
// Callers must then fall back to a full or diff backup, after which
// [Set.MarkComplete] clears the losses that backup covered.
type Set struct {
	mu        sync.Mutex
	size      int64 // device size in bytes
	blockSize int64
	shift     uint // log2(blockSize)
	nblocks   uint64
	open      uint64             // number of the epoch receiving writes
	epochs    map[uint64]*bitmap // pending blocks per epoch, open epoch included
	lossEpoch uint64             // highest epoch in which a loss was detected, 0: none
	reason    string             // why the set is incomplete
}

// DefaultBlockSize is the block size of a Set when none is given.
const DefaultBlockSize = 4096

// NewSet returns an empty, complete Set for a device of deviceSize bytes at
// blockSize bytes per block (0 means DefaultBlockSize). blockSize must be a
// power of two of at least 512; NewSet panics otherwise, as that is a
// programming error. The first open epoch is 1.
func NewSet(deviceSize int64, blockSize int) *Set {
	if blockSize == 0 {
		blockSize = DefaultBlockSize
	}
	if err := checkGeometry(deviceSize, int64(blockSize)); err != nil {
		panic("tracer: NewSet: " + err.Error())
	}
	return newSet(deviceSize, int64(blockSize))
}

func checkGeometry(size, bs int64) error {
	if bs < 512 || bs&(bs-1) != 0 || bs > 1<<30 {
		return fmt.Errorf("block size %d is not a power of two between 512 and 1 GiB", bs)
	}
	if size < 0 {
		return fmt.Errorf("negative device size %d", size)
	}
	// Chunk indices are uint32.
	if blocks := (uint64(size) + uint64(bs) - 1) / uint64(bs); blocks>>chunkShift > 1<<32-1 {
		return fmt.Errorf("device of %d bytes has too many %d-byte blocks", size, bs)
	}
	return nil
}

func newSet(size, bs int64) *Set {
	s := &Set{
		size:      size,
		blockSize: bs,
		shift:     uint(bits.TrailingZeros64(uint64(bs))),
		nblocks:   (uint64(size) + uint64(bs) - 1) / uint64(bs),
		open:      1,
		epochs:    make(map[uint64]*bitmap),
	}
	return s
}

// BlockSize returns the block size in bytes.
func (s *Set) BlockSize() int { return int(s.blockSize) }

// Size returns the device size in bytes.
func (s *Set) Size() int64 { return s.size }

// Add records that the bytes [off, off+length) changed, in the open epoch.
// The range is widened to whole blocks and clipped to the device.
func (s *Set) Add(off, length int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addLocked(off, length)
}

// addExtents adds several ranges under one lock: the ftrace reader
// applies a whole ring page at once.
func (s *Set) addExtents(es []Extent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range es {
		s.addLocked(e.Offset, e.Length)
	}
}

func (s *Set) addLocked(off, length int64) {
	start, end, ok := s.blocks(off, length)
	if !ok {
		return
	}
	b := s.epochs[s.open]
	if b == nil {
		b = newBitmap()
		s.epochs[s.open] = b
	}
	b.setRange(start, end)
}

// blocks converts a byte range to the block range it touches, clipped to the
// device.
func (s *Set) blocks(off, length int64) (start, end uint64, ok bool) {
	if length <= 0 || off >= s.size || off+length <= 0 {
		return 0, 0, false
	}
	if off < 0 {
		length += off
		off = 0
	}
	e := off + length
	if e > s.size || e < off {
		e = s.size
	}
	start = uint64(off) >> s.shift
	end = (uint64(e) + uint64(s.blockSize) - 1) >> s.shift
	return start, end, start < end
}

// Epoch returns the number of the open epoch, the one receiving writes.
func (s *Set) Epoch() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open
}

// Cut closes the open epoch and returns its number; later writes go to the
// next epoch. Cut only partitions what the Set has been told: to cover every
// write completed so far, call [Tracer.Flush] first (or [Tracer.Cut]).
func (s *Set) Cut() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.open
	s.open++
	return n
}

// Pending returns the unacknowledged changed extents of the epochs numbered
// upTo or less, merged and sorted by offset, in bytes and clipped to the
// device size.
func (s *Set) Pending(upTo uint64) []Extent {
	var out []Extent
	for e := range s.Extents(upTo) {
		out = append(out, e)
	}
	return out
}

// Extents iterates over the same extents as [Set.Pending] without building
// the slice. The Set is locked during the iteration: fn must not call
// methods of the Set.
func (s *Set) Extents(upTo uint64) iter.Seq[Extent] {
	return func(yield func(Extent) bool) {
		s.mu.Lock()
		defer s.mu.Unlock()
		var maps []*bitmap
		for n, b := range s.epochs {
			if n <= upTo {
				maps = append(maps, b)
			}
		}
		runsOf(maps, func(start, end uint64) bool {
			off := int64(start << s.shift)
			e := int64(end << s.shift)
			if e > s.size {
				e = s.size
			}
			return yield(Extent{Offset: off, Length: e - off})
		})
	}
}

// Count returns how many blocks are pending in the epochs numbered upTo or
// less.
func (s *Set) Count(upTo uint64) int64 {
	var n int64
	for e := range s.Extents(upTo) {
		n += (e.Length + s.blockSize - 1) / s.blockSize
	}
	return n
}

// Acknowledge removes the blocks wholly or partly covered by es from the
// epochs numbered upTo or less: the caller has made their content, as of
// the cut of epoch upTo or later, durable on the backup target. Blocks
// written in later epochs stay pending there. Call it only after the
// target confirmed durability (an NBD flush, an fsync); a pass that failed
// must not acknowledge anything.
func (s *Set) Acknowledge(es []Extent, upTo uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, b := range s.epochs {
		if n > upTo {
			continue
		}
		for _, e := range es {
			if start, end, ok := s.blocks(e.Offset, e.Length); ok {
				b.clearRange(start, end)
			}
		}
		if b.empty() {
			delete(s.epochs, n)
		}
	}
}

// ErrGeometry is returned when two Sets of different devices or block sizes
// are combined.
var ErrGeometry = errors.New("tracer: sets differ in device size or block size")

// Merge adds every pending block of o, whatever its epoch, to the open
// epoch of s, and carries over o's incompleteness. Both sets must have the
// same device size and block size.
func (s *Set) Merge(o *Set) error {
	if s == o {
		return nil
	}
	// Copy o under its own lock, then merge under ours: never hold both.
	o.mu.Lock()
	if o.size != s.size || o.blockSize != s.blockSize {
		o.mu.Unlock()
		return ErrGeometry
	}
	union := newBitmap()
	for _, b := range o.epochs {
		union.or(b)
	}
	lost, reason := o.lossEpoch != 0, o.reason
	o.mu.Unlock()

	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.epochs[s.open]
	if b == nil {
		b = newBitmap()
		s.epochs[s.open] = b
	}
	b.or(union)
	if b.empty() {
		delete(s.epochs, s.open)
	}
	if lost {
		s.markIncompleteLocked("merged set: " + reason)
	}
	return nil
}

// MarkIncomplete records that changes may have been missed, with the
// reason. The set stays incomplete until [Set.MarkComplete] is called with
// an epoch at or after the one open now.
func (s *Set) MarkIncomplete(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.markIncompleteLocked(reason)
}

func (s *Set) markIncompleteLocked(reason string) {
	s.lossEpoch = s.open
	const max = 1024
	switch {
	case s.reason == "":
		s.reason = reason
	case len(s.reason)+len(reason)+2 <= max:
		s.reason += "; " + reason
	}
	if len(s.reason) > max {
		s.reason = s.reason[:max]
	}
}

// Complete reports whether every change since the set was created (or last
// made complete) is recorded; if not, the string says why.
func (s *Set) Complete() (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lossEpoch == 0, s.reason
}

// MarkComplete tells the set that a full or diff backup made durable the
// whole device as of the cut of epoch upTo. Losses detected while an epoch
// numbered upTo or less was open are thereby repaired and forgotten; a loss
// detected later keeps the set incomplete.
func (s *Set) MarkComplete(upTo uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lossEpoch != 0 && s.lossEpoch <= upTo {
		s.lossEpoch = 0
		s.reason = ""
	}
}
