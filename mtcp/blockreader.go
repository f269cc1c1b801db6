package mtcp

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"hash/crc64"
	"io"

	"github.com/blockimage/blockimage/internal/iox"
	"github.com/ulikunitz/xz/lzma"
)

// ErrMemoryLimit is returned for a Block whose LZMA2 dictionary is larger
// than ReaderOptions.MaxDictSize allows.
var ErrMemoryLimit = errors.New("mtcp: dictionary exceeds the memory limit")

// blockReader decompresses one Block and verifies its sizes, padding and
// check when its LZMA2 data ends.
type blockReader struct {
	br    *bufio.Reader
	h     blockHeader
	check byte
	cr    iox.CountingReader
	lz    *lzma.Reader2
	sum   hash.Hash
	n     int64 // uncompressed bytes so far
	want  int64 // expected uncompressed size, -1 if unknown
	rec   indexRecord
	done  bool
}

// newBlockReader parses the Block Header at br's position. want is the
// uncompressed size the Index gives, or -1.
func newBlockReader(br *bufio.Reader, check byte, want, maxDict int64) (*blockReader, error) {
	first, err := br.Peek(1)
	if err != nil {
		return nil, truncated(err)
	}
	hdr := make([]byte, (int(first[0])+1)*4)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return nil, truncated(err)
	}
	h, err := parseBlockHeader(hdr)
	if err != nil {
		return nil, err
	}
	if want >= 0 && h.uncompressedSize >= 0 && want != h.uncompressedSize {
		return nil, formatError("block header says %d bytes, index says %d", h.uncompressedSize, want)
	}
	if want < 0 {
		want = h.uncompressedSize
	}
	// No match reaches further back than the data itself, so a Block of
	// known size never needs a larger dictionary than its size.
	dict := int64(h.dictSize)
	if want >= 0 && want < dict {
		dict = want
	}
	dict = max(dict, 4096)
	if dict > maxDict {
		return nil, fmt.Errorf("%w: block needs a %d MiB dictionary, limit %d MiB", ErrMemoryLimit, dict>>20, maxDict>>20)
	}
	b := &blockReader{br: br, h: h, check: check, want: want}
	var src io.Reader = br
	if h.compressedSize >= 0 {
		src = io.LimitReader(br, h.compressedSize)
	}
	b.cr.R = src
	if b.lz, err = (lzma.Reader2Config{DictCap: int(dict)}).NewReader2(&b.cr); err != nil {
		return nil, lzmaError(err)
	}
	switch check {
	case checkCRC32:
		b.sum = crc32.NewIEEE()
	case checkCRC64:
		b.sum = crc64.New(crc64Table)
	case checkSHA256:
		b.sum = sha256.New()
	}
	return b, nil
}

func (b *blockReader) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.lz.Read(p)
	b.n += int64(n)
	if b.sum != nil {
		b.sum.Write(p[:n])
	}
	if b.want >= 0 && b.n > b.want {
		return 0, formatError("block holds more than its %d bytes", b.want)
	}
	if err == io.EOF {
		if err := b.finish(); err != nil {
			return n, err
		}
		return n, io.EOF
	}
	if err != nil {
		return n, lzmaError(err)
	}
	return n, nil
}

// finish verifies what follows the LZMA2 data.
func (b *blockReader) finish() error {
	b.done = true
	if b.want >= 0 && b.n != b.want {
		return formatError("block holds %d bytes, header or index says %d", b.n, b.want)
	}
	if b.h.compressedSize >= 0 && b.cr.N != b.h.compressedSize {
		return formatError("block's LZMA2 data is %d bytes, header says %d", b.cr.N, b.h.compressedSize)
	}
	var tail [64 + 3]byte
	pad := int(padded4(int64(b.h.size)+b.cr.N) - int64(b.h.size) - b.cr.N)
	cs := checkSize(b.check)
	if _, err := io.ReadFull(b.br, tail[:pad+cs]); err != nil {
		return truncated(err)
	}
	if !bytes.Equal(tail[:pad], make([]byte, pad)) {
		return formatError("non-zero block padding")
	}
	if b.sum != nil {
		got := b.sum.Sum(nil)
		if b.check == checkCRC32 || b.check == checkCRC64 {
			// CRCs are stored little-endian; Sum returns big-endian.
			for i, j := 0, len(got)-1; i < j; i, j = i+1, j-1 {
				got[i], got[j] = got[j], got[i]
			}
		}
		if !bytes.Equal(got, tail[pad:pad+cs]) {
			return formatError("block check mismatch: data is corrupt")
		}
	}
	b.rec = indexRecord{unpadded: int64(b.h.size) + b.cr.N + int64(cs), uncompressed: b.n}
	return nil
}

func truncated(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return formatError("truncated input")
	}
	return err
}

func lzmaError(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return formatError("truncated LZMA2 data")
	}
	return fmt.Errorf("%w: LZMA2: %v", ErrFormat, err)
}
