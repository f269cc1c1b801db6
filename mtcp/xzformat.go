package mtcp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/crc64"
)

// The .xz container, from https://tukaani.org/xz/xz-file-format.txt.
const (
	headerMagic = "\xfd7zXZ\x00"
	footerMagic = "YZ"

	streamHeaderSize = 12
	streamFooterSize = 12

	checkNone   = 0x00
	checkCRC32  = 0x01
	checkCRC64  = 0x04
	checkSHA256 = 0x0a

	filterLZMA2 = 0x21

	maxVLI         = 1<<63 - 1
	maxBlockHeader = 1024
)

var crc64Table = crc64.MakeTable(crc64.ECMA)

// ErrFormat is matched (errors.Is) by every error about malformed or
// corrupt .xz input.
var ErrFormat = errors.New("mtcp: invalid .xz data")

func formatError(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrFormat}, args...)...)
}

func appendVLI(dst []byte, v uint64) []byte {
	for v >= 0x80 {
		dst = append(dst, byte(v)|0x80)
		v >>= 7
	}
	return append(dst, byte(v))
}

// readVLI decodes a variable-length integer from b and returns it with
// the number of bytes used.
func readVLI(b []byte) (uint64, int, error) {
	var v uint64
	for i := 0; i < 9; i++ {
		if i >= len(b) {
			return 0, 0, formatError("truncated integer")
		}
		c := b[i]
		v |= uint64(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			if c == 0 && i > 0 {
				return 0, 0, formatError("integer not minimally encoded")
			}
			return v, i + 1, nil
		}
	}
	return 0, 0, formatError("integer longer than 9 bytes")
}

func appendLE32(dst []byte, v uint32) []byte { return binary.LittleEndian.AppendUint32(dst, v) }

// streamHeader returns the 12-byte Stream Header for the check type.
func streamHeader(check byte) []byte {
	b := append([]byte(headerMagic), 0, check)
	return appendLE32(b, crc32.ChecksumIEEE(b[6:8]))
}

// dictByte encodes a dictionary size as the LZMA2 filter property: the
// smallest encodable size that is at least size.
func dictByte(size uint32) byte {
	for b := byte(0); b < 40; b++ {
		if dictSizeOf(b) >= size {
			return b
		}
	}
	return 40
}

// dictSizeOf decodes the LZMA2 dictionary property (0..40).
func dictSizeOf(b byte) uint32 {
	if b >= 40 {
		return 0xffffffff
	}
	return (2 | uint32(b&1)) << (b/2 + 11)
}

// checkSize is the size of the check field for a check type.
func checkSize(check byte) int {
	switch check {
	case checkNone:
		return 0
	case checkCRC32, 0x02, 0x03:
		return 4
	case checkCRC64, 0x05, 0x06:
		return 8
	case 0x07, 0x08, 0x09:
		return 16
	case checkSHA256, 0x0b, 0x0c:
		return 32
	}
	return 64
}

// BlockBound is the largest Block the package produces for n bytes of
// input: LZMA2 falls back to stored chunks of at most 64 KiB with a
// 3-byte header on incompressible data, plus the Block Header, padding
// and check. Data messages from a child are limited to it.
func BlockBound(n int) int { return n + n/4096 + 4096 }

// frameBlock wraps raw LZMA2 data (with its end marker) of the n-byte
// chunk src into a complete .xz Block with a CRC64 check, appended to dst.
// The dictionary size in the filter properties is that of the encoder,
// reduced to the chunk size when smaller, as no match reaches further.
func frameBlock(dst, lzma2, src []byte, dictSize uint32) []byte {
	if uint64(len(src)) < uint64(dictSize) {
		dictSize = uint32(max(len(src), 4096))
	}
	start := len(dst)
	dst = append(dst, 0, 0xc0) // size placeholder; 1 filter, both sizes present
	dst = appendVLI(dst, uint64(len(lzma2)))
	dst = appendVLI(dst, uint64(len(src)))
	dst = append(dst, filterLZMA2, 1, dictByte(dictSize))
	for (len(dst)-start)%4 != 0 {
		dst = append(dst, 0)
	}
	dst[start] = byte((len(dst)-start+4)/4 - 1)
	dst = appendLE32(dst, crc32.ChecksumIEEE(dst[start:]))
	dst = append(dst, lzma2...)
	for (len(dst)-start)%4 != 0 {
		dst = append(dst, 0)
	}
	return binary.LittleEndian.AppendUint64(dst, crc64.Checksum(src, crc64Table))
}

// blockHeader is the part of a Block Header the package needs.
type blockHeader struct {
	size             int   // header size in bytes
	compressedSize   int64 // -1 when absent
	uncompressedSize int64 // -1 when absent
	dictSize         uint32
}

// parseBlockHeader parses and verifies the Block Header at the start of b.
// Only a single LZMA2 filter is supported, which is what xz, pixz and this
// package write.
func parseBlockHeader(b []byte) (blockHeader, error) {
	var h blockHeader
	if len(b) < 1 {
		return h, formatError("truncated block header")
	}
	if b[0] == 0 {
		return h, formatError("index indicator where a block header was expected")
	}
	h.size = (int(b[0]) + 1) * 4
	if len(b) < h.size {
		return h, formatError("truncated block header")
	}
	b = b[:h.size]
	if crc32.ChecksumIEEE(b[:h.size-4]) != binary.LittleEndian.Uint32(b[h.size-4:]) {
		return h, formatError("block header CRC32 mismatch")
	}
	flags := b[1]
	if flags&0x3c != 0 {
		return h, formatError("reserved block flags set")
	}
	p := 2
	end := h.size - 4
	h.compressedSize, h.uncompressedSize = -1, -1
	if flags&0x40 != 0 {
		v, n, err := readVLI(b[p:end])
		if err != nil {
			return h, err
		}
		if v == 0 || v > maxVLI {
			return h, formatError("invalid compressed size %d", v)
		}
		h.compressedSize, p = int64(v), p+n
	}
	if flags&0x80 != 0 {
		v, n, err := readVLI(b[p:end])
		if err != nil {
			return h, err
		}
		if v > maxVLI {
			return h, formatError("invalid uncompressed size")
		}
		h.uncompressedSize, p = int64(v), p+n
	}
	if flags&3 != 0 {
		return h, formatError("filter chains other than a single LZMA2 filter are not supported")
	}
	id, n, err := readVLI(b[p:end])
	if err != nil {
		return h, err
	}
	p += n
	if id != filterLZMA2 {
		return h, formatError("filter 0x%x is not supported (only LZMA2)", id)
	}
	psize, n, err := readVLI(b[p:end])
	if err != nil {
		return h, err
	}
	p += n
	if psize != 1 || p >= end {
		return h, formatError("bad LZMA2 filter properties")
	}
	if b[p] > 40 {
		return h, formatError("LZMA2 dictionary property %d out of range", b[p])
	}
	h.dictSize = dictSizeOf(b[p])
	p++
	for ; p < end; p++ {
		if b[p] != 0 {
			return h, formatError("non-zero block header padding")
		}
	}
	return h, nil
}

// indexRecord is one Block's entry in the Index.
type indexRecord struct {
	unpadded     int64
	uncompressed int64
}

// appendIndex appends the Index for records to dst.
func appendIndex(dst []byte, records []indexRecord) []byte {
	start := len(dst)
	dst = append(dst, 0)
	dst = appendVLI(dst, uint64(len(records)))
	for _, r := range records {
		dst = appendVLI(dst, uint64(r.unpadded))
		dst = appendVLI(dst, uint64(r.uncompressed))
	}
	for (len(dst)-start)%4 != 0 {
		dst = append(dst, 0)
	}
	return appendLE32(dst, crc32.ChecksumIEEE(dst[start:]))
}

// streamFooter returns the 12-byte Stream Footer for an Index of
// indexSize bytes.
func streamFooter(check byte, indexSize int) []byte {
	b := make([]byte, 4, 12)
	b = appendLE32(b, uint32(indexSize/4-1))
	b = append(b, 0, check)
	binary.LittleEndian.PutUint32(b[:4], crc32.ChecksumIEEE(b[4:10]))
	return append(b, footerMagic...)
}
