package mtcp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"hash/crc32"
	"io"
	"os"
	"runtime"
)

// ReaderOptions configure a [Reader]. The zero value works.
type ReaderOptions struct {
	// Workers is the number of Blocks decompressed at once when the
	// input is an io.ReaderAt of known size; default runtime.NumCPU.
	// 1 reads sequentially.
	Workers int
	// Size is the input's size for the parallel path. 0: taken from a
	// Size() int64 method, or Stat of an *os.File; when unknown, or the
	// input is no io.ReaderAt, the Reader is sequential.
	Size int64
	// MaxDictSize limits each Block's LZMA2 dictionary, the decoder's
	// main memory cost; default 256 MiB (xz -9 needs 64 MiB). A Block
	// needing more fails with ErrMemoryLimit.
	MaxDictSize int64
	// MaxBlockBuffer is the largest Block decompressed into memory by the
	// parallel path (each worker holds one); default 256 MiB. A file with
	// larger Blocks is read sequentially.
	MaxBlockBuffer int64
}

func (o ReaderOptions) withDefaults() ReaderOptions {
	if o.Workers <= 0 {
		o.Workers = runtime.NumCPU()
	}
	if o.MaxDictSize <= 0 {
		o.MaxDictSize = 256 << 20
	}
	if o.MaxBlockBuffer <= 0 {
		o.MaxBlockBuffer = 256 << 20
	}
	return o
}

// Reader decompresses .xz data: one or more Streams with any number of
// Blocks, Stream Padding, LZMA2 filter, any check (CRC32, CRC64 and
// SHA-256 are verified). Every Block's sizes and check and every Index
// are verified; corrupt or truncated input is an error wrapping ErrFormat.
type Reader struct {
	ctx context.Context
	r   io.Reader
}

// NewReader returns a Reader of the .xz data in r. When r is an
// io.ReaderAt of known size (see ReaderOptions.Size) the Index is read
// first and Blocks are decompressed in parallel by goroutines, in a window
// of Workers Blocks; otherwise r is read sequentially. ctx cancels reads.
func NewReader(ctx context.Context, r io.Reader, o ReaderOptions) (*Reader, error) {
	o = o.withDefaults()
	if ra, ok := r.(io.ReaderAt); ok && o.Workers > 1 {
		size := o.Size
		if size == 0 {
			size = sizeOf(r)
		}
		if size > 0 {
			locs, err := locateBlocks(ra, size)
			if err != nil {
				return nil, err
			}
			if parallelWorthIt(locs, o) {
				return &Reader{ctx: ctx, r: newParallelReader(ctx, ra, locs, o)}, nil
			}
			r = io.NewSectionReader(ra, 0, size)
		}
	}
	return &Reader{ctx: ctx, r: newSeqReader(r, o)}, nil
}

func parallelWorthIt(locs []blockLoc, o ReaderOptions) bool {
	if len(locs) < 2 {
		return false
	}
	for _, l := range locs {
		if l.rec.uncompressed > o.MaxBlockBuffer || l.rec.unpadded > 2*o.MaxBlockBuffer+(1<<20) {
			return false
		}
	}
	return true
}

func sizeOf(r io.Reader) int64 {
	if s, ok := r.(interface{ Size() int64 }); ok {
		return s.Size()
	}
	if f, ok := r.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			return fi.Size()
		}
	}
	return 0
}

// Close stops the parallel decompressors; it does not close the input.
func (r *Reader) Close() error {
	if c, ok := r.r.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// Read reads decompressed data.
func (r *Reader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// seqReader decodes .xz data front to back.
type seqReader struct {
	br      *bufio.Reader
	o       ReaderOptions
	check   byte
	inBlock *blockReader
	records []indexRecord
	started bool // a stream was seen
	inside  bool // between Stream Header and Index
	err     error
}

func newSeqReader(r io.Reader, o ReaderOptions) *seqReader {
	return &seqReader{br: bufio.NewReaderSize(r, 256<<10), o: o}
}

func (s *seqReader) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.read(p)
	if err != nil {
		s.err = err
	}
	return n, err
}

func (s *seqReader) read(p []byte) (int, error) {
	for {
		if s.inBlock != nil {
			n, err := s.inBlock.Read(p)
			if err == io.EOF {
				s.records = append(s.records, s.inBlock.rec)
				s.inBlock = nil
				if n > 0 || len(p) == 0 {
					return n, nil
				}
				continue
			}
			return n, err
		}
		if !s.inside {
			if done, err := s.nextStream(); done || err != nil {
				return 0, err
			}
			continue
		}
		b, err := s.br.Peek(1)
		if err != nil {
			return 0, truncated(err)
		}
		if b[0] == 0 {
			if err := s.endStream(); err != nil {
				return 0, err
			}
			continue
		}
		if s.inBlock, err = newBlockReader(s.br, s.check, -1, s.o.MaxDictSize); err != nil {
			return 0, err
		}
	}
}

// nextStream skips Stream Padding and reads a Stream Header; done is true
// at a clean end of input after at least one Stream.
func (s *seqReader) nextStream() (done bool, err error) {
	if s.started {
		for {
			b, err := s.br.Peek(4)
			if len(b) == 0 && err == io.EOF {
				return true, io.EOF
			}
			if err != nil {
				return false, formatError("%d stray bytes after a stream", len(b))
			}
			if !bytes.Equal(b, []byte{0, 0, 0, 0}) {
				break
			}
			s.br.Discard(4)
		}
	}
	var hdr [streamHeaderSize]byte
	if _, err := io.ReadFull(s.br, hdr[:]); err != nil {
		if err == io.EOF && !s.started {
			return false, formatError("empty input")
		}
		return false, truncated(err)
	}
	check, err := parseStreamHeader(hdr[:])
	if err != nil {
		return false, err
	}
	s.check, s.started, s.inside, s.records = check, true, true, s.records[:0]
	return false, nil
}

// endStream reads the Index and Stream Footer and checks them against the
// Blocks just decoded.
func (s *seqReader) endStream() error {
	h := crc32.NewIEEE()
	var n int64
	readByte := func() (byte, error) {
		c, err := s.br.ReadByte()
		if err != nil {
			return 0, truncated(err)
		}
		h.Write([]byte{c})
		n++
		return c, nil
	}
	readVLIFrom := func() (uint64, error) {
		var buf []byte
		for len(buf) < 9 {
			c, err := readByte()
			if err != nil {
				return 0, err
			}
			buf = append(buf, c)
			if c&0x80 == 0 {
				v, _, err := readVLI(buf)
				return v, err
			}
		}
		return 0, formatError("integer longer than 9 bytes")
	}
	readByte() // the indicator, known to be 0
	count, err := readVLIFrom()
	if err != nil {
		return err
	}
	if count != uint64(len(s.records)) {
		return formatError("index lists %d blocks, stream has %d", count, len(s.records))
	}
	for _, r := range s.records {
		u, err := readVLIFrom()
		if err != nil {
			return err
		}
		c, err := readVLIFrom()
		if err != nil {
			return err
		}
		if int64(u) != r.unpadded || int64(c) != r.uncompressed {
			return formatError("index record %d/%d does not match block %d/%d", u, c, r.unpadded, r.uncompressed)
		}
	}
	for n%4 != 0 {
		c, err := readByte()
		if err != nil {
			return err
		}
		if c != 0 {
			return formatError("non-zero index padding")
		}
	}
	var tail [4 + streamFooterSize]byte
	if _, err := io.ReadFull(s.br, tail[:]); err != nil {
		return truncated(err)
	}
	if binary.LittleEndian.Uint32(tail[:4]) != h.Sum32() {
		return formatError("index CRC32 mismatch")
	}
	check, indexSize, err := parseStreamFooter(tail[4:])
	if err != nil {
		return err
	}
	if check != s.check || indexSize != n+4 {
		return formatError("stream footer does not match header and index")
	}
	s.inside = false
	return nil
}
