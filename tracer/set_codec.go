package tracer

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math/bits"
	"slices"
)

// The serialised Set, little-endian throughout:
//
//	magic      [8]byte  "BLKISET\x00"
//	version    uint32   1
//	blockSize  uint32
//	size       uint64   device size in bytes
//	open       uint64   open epoch
//	lossEpoch  uint64   0 when complete
//	reasonLen  uint16, reason [reasonLen]byte
//	epochs     uint32, then per epoch in increasing order:
//	    epoch  uint64   (< open... or == open)
//	    chunks uint32, then per chunk in increasing index order:
//	        index uint32
//	        kind  uint8    1: every bit set, 2: a 4096-byte bitmap follows
//	crc        uint32   CRC-32C of every byte before it
//
// Everything is checked on reading; see ReadSet.

var setMagic = [8]byte{'B', 'L', 'K', 'I', 'S', 'E', 'T', 0}

const (
	setVersion   = 1
	kindFull     = 1
	kindBitmap   = 2
	maxReasonLen = 1024
)

// ErrCorruptSet is wrapped by the errors ReadSet returns for input that is
// not a valid serialised Set.
var ErrCorruptSet = errors.New("tracer: corrupt changed-block set")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type countWriter struct {
	w   *bufio.Writer
	h   hash.Hash32
	n   int64
	err error
}

func (c *countWriter) write(p []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.h.Write(p[:n])
	c.err = err
}

func (c *countWriter) u8(v uint8) { c.write([]byte{v}) }
func (c *countWriter) u16(v uint16) {
	c.write(binary.LittleEndian.AppendUint16(nil, v))
}
func (c *countWriter) u32(v uint32) {
	c.write(binary.LittleEndian.AppendUint32(nil, v))
}
func (c *countWriter) u64(v uint64) {
	c.write(binary.LittleEndian.AppendUint64(nil, v))
}

// WriteTo writes the set, so that tracking survives a restart of the
// program that owns it. The set stays locked while it is written. It
// implements io.WriterTo.
func (s *Set) WriteTo(w io.Writer) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cw := &countWriter{w: bufio.NewWriterSize(w, 64<<10), h: crc32.New(castagnoli)}
	cw.write(setMagic[:])
	cw.u32(setVersion)
	cw.u32(uint32(s.blockSize))
	cw.u64(uint64(s.size))
	cw.u64(s.open)
	cw.u64(s.lossEpoch)
	reason := s.reason
	if len(reason) > maxReasonLen {
		reason = reason[:maxReasonLen]
	}
	cw.u16(uint16(len(reason)))
	cw.write([]byte(reason))
	nums := make([]uint64, 0, len(s.epochs))
	for n, b := range s.epochs {
		if !b.empty() {
			nums = append(nums, n)
		}
	}
	slices.Sort(nums)
	cw.u32(uint32(len(nums)))
	buf := make([]byte, chunkWords*8)
	for _, n := range nums {
		b := s.epochs[n]
		cw.u64(n)
		cw.u32(uint32(len(b.chunks)))
		for _, k := range b.sortedKeys() {
			c := b.chunks[k]
			cw.u32(k)
			if c == fullChunk {
				cw.u8(kindFull)
				continue
			}
			cw.u8(kindBitmap)
			for i, word := range c.w {
				binary.LittleEndian.PutUint64(buf[i*8:], word)
			}
			cw.write(buf)
		}
	}
	sum := cw.h.Sum32()
	cw.write(binary.LittleEndian.AppendUint32(nil, sum))
	if cw.err == nil {
		cw.err = cw.w.Flush()
	}
	return cw.n, cw.err
}

type setReader struct {
	r   *bufio.Reader
	h   hash.Hash32
	buf [chunkWords * 8]byte
	err error
}

func (r *setReader) read(n int) []byte {
	if r.err != nil {
		return r.buf[:n]
	}
	if _, err := io.ReadFull(r.r, r.buf[:n]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		r.err = fmt.Errorf("%w: %w", ErrCorruptSet, err)
		clear(r.buf[:n])
		return r.buf[:n]
	}
	r.h.Write(r.buf[:n])
	return r.buf[:n]
}

func (r *setReader) u8() uint8   { return r.read(1)[0] }
func (r *setReader) u16() uint16 { return binary.LittleEndian.Uint16(r.read(2)) }
func (r *setReader) u32() uint32 { return binary.LittleEndian.Uint32(r.read(4)) }
func (r *setReader) u64() uint64 { return binary.LittleEndian.Uint64(r.read(8)) }

func corruptf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorruptSet, fmt.Sprintf(format, args...))
}

// ReadSet reads a set written by [Set.WriteTo]. Damaged or truncated input
// yields an error wrapping ErrCorruptSet; memory grows with the bytes
// actually read, never with a count read from the input.
func ReadSet(rd io.Reader) (*Set, error) {
	r := &setReader{r: bufio.NewReaderSize(rd, 64<<10), h: crc32.New(castagnoli)}
	if m := r.read(8); r.err == nil && [8]byte(m) != setMagic {
		return nil, corruptf("bad magic %q", m)
	}
	if v := r.u32(); r.err == nil && v != setVersion {
		return nil, corruptf("unsupported version %d", v)
	}
	bs := int64(r.u32())
	size := r.u64()
	open := r.u64()
	lossEpoch := r.u64()
	rl := int(r.u16())
	if r.err != nil {
		return nil, r.err
	}
	if size > 1<<62 {
		return nil, corruptf("device size %d", size)
	}
	if err := checkGeometry(int64(size), bs); err != nil {
		return nil, corruptf("%v", err)
	}
	if open == 0 || open == ^uint64(0) || lossEpoch > open {
		return nil, corruptf("epoch %d, loss epoch %d", open, lossEpoch)
	}
	if rl > maxReasonLen {
		return nil, corruptf("reason of %d bytes", rl)
	}
	reason := string(r.read(rl))
	if lossEpoch == 0 && rl != 0 {
		return nil, corruptf("complete set with a loss reason")
	}
	s := newSet(int64(size), bs)
	s.open, s.lossEpoch, s.reason = open, lossEpoch, reason
	nchunks := (s.nblocks + chunkBits - 1) >> chunkShift
	lastBits := s.nblocks - (nchunks-1)<<chunkShift // valid bits in the last chunk
	ne := r.u32()
	var prevEpoch uint64
	for i := uint32(0); i < ne && r.err == nil; i++ {
		n := r.u64()
		if r.err != nil {
			break
		}
		if n == 0 || n > open || (i > 0 && n <= prevEpoch) {
			return nil, corruptf("epoch %d out of order or beyond open epoch %d", n, open)
		}
		prevEpoch = n
		b := newBitmap()
		nc := r.u32()
		var prev uint32
		for j := uint32(0); j < nc && r.err == nil; j++ {
			k := r.u32()
			kind := r.u8()
			if r.err != nil {
				break
			}
			if uint64(k) >= nchunks || (j > 0 && k <= prev) {
				return nil, corruptf("chunk %d out of order or beyond the device", k)
			}
			prev = k
			valid := uint64(chunkBits)
			if uint64(k) == nchunks-1 {
				valid = lastBits
			}
			switch kind {
			case kindFull:
				if valid != chunkBits {
					return nil, corruptf("full chunk %d past the device end", k)
				}
				b.chunks[k] = fullChunk
			case kindBitmap:
				raw := r.read(chunkWords * 8)
				if r.err != nil {
					break
				}
				c := &chunk{}
				for w := range c.w {
					c.w[w] = binary.LittleEndian.Uint64(raw[w*8:])
					c.n += bits.OnesCount64(c.w[w])
				}
				if c.n == 0 {
					return nil, corruptf("empty chunk %d", k)
				}
				if valid < chunkBits && tailSet(c, valid) {
					return nil, corruptf("chunk %d has blocks past the device end", k)
				}
				if c.n == chunkBits {
					return nil, corruptf("full chunk %d stored as a bitmap", k)
				}
				b.chunks[k] = c
			default:
				return nil, corruptf("chunk kind %d", kind)
			}
		}
		if r.err == nil {
			if b.empty() {
				return nil, corruptf("empty epoch %d", n)
			}
			s.epochs[n] = b
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	want := r.h.Sum32()
	var sum [4]byte
	if _, err := io.ReadFull(r.r, sum[:]); err != nil {
		return nil, corruptf("missing checksum: %v", err)
	}
	if got := binary.LittleEndian.Uint32(sum[:]); got != want {
		return nil, corruptf("checksum %08x, computed %08x", got, want)
	}
	return s, nil
}

// tailSet reports whether any bit at or after valid is set.
func tailSet(c *chunk, valid uint64) bool {
	w := valid / 64
	if rem := valid % 64; rem != 0 {
		if c.w[w]>>rem != 0 {
			return true
		}
		w++
	}
	for ; w < chunkWords; w++ {
		if c.w[w] != 0 {
			return true
		}
	}
	return false
}
