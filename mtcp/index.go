package mtcp

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"io"
)

// maxIndexSize bounds the Index the parallel reader loads into memory:
// 64 MiB holds millions of Blocks, far more than any real file has.
const maxIndexSize = 64 << 20

// parseStreamHeader verifies a 12-byte Stream Header and returns its
// check type.
func parseStreamHeader(b []byte) (byte, error) {
	if len(b) < streamHeaderSize || string(b[:6]) != headerMagic {
		return 0, formatError("not an .xz stream (bad header magic)")
	}
	if crc32.ChecksumIEEE(b[6:8]) != binary.LittleEndian.Uint32(b[8:12]) {
		return 0, formatError("stream header CRC32 mismatch")
	}
	if b[6] != 0 || b[7] > 0x0f {
		return 0, formatError("unsupported stream flags %02x%02x", b[6], b[7])
	}
	return b[7], nil
}

// parseStreamFooter verifies a 12-byte Stream Footer and returns its check
// type and the size of the Index it describes.
func parseStreamFooter(b []byte) (check byte, indexSize int64, err error) {
	if len(b) < streamFooterSize || string(b[10:12]) != footerMagic {
		return 0, 0, formatError("bad stream footer magic")
	}
	if crc32.ChecksumIEEE(b[4:10]) != binary.LittleEndian.Uint32(b[0:4]) {
		return 0, 0, formatError("stream footer CRC32 mismatch")
	}
	if b[8] != 0 || b[9] > 0x0f {
		return 0, 0, formatError("unsupported stream flags %02x%02x", b[8], b[9])
	}
	return b[9], (int64(binary.LittleEndian.Uint32(b[4:8])) + 1) * 4, nil
}

// parseIndex decodes a complete Index (indicator to CRC32). Records are
// appended as they are read, never preallocated from the count.
func parseIndex(b []byte) ([]indexRecord, error) {
	if len(b) < 8 || len(b)%4 != 0 || b[0] != 0 {
		return nil, formatError("malformed index")
	}
	if crc32.ChecksumIEEE(b[:len(b)-4]) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return nil, formatError("index CRC32 mismatch")
	}
	body := b[:len(b)-4]
	p := 1
	count, n, err := readVLI(body[p:])
	if err != nil {
		return nil, err
	}
	p += n
	if count > uint64(len(body))/2 {
		return nil, formatError("index claims %d records in %d bytes", count, len(b))
	}
	var recs []indexRecord
	for i := uint64(0); i < count; i++ {
		u, n, err := readVLI(body[p:])
		if err != nil {
			return nil, err
		}
		p += n
		c, n, err := readVLI(body[p:])
		if err != nil {
			return nil, err
		}
		p += n
		if u < 5 || u > maxVLI-3 || c > maxVLI {
			return nil, formatError("index record %d has invalid sizes %d/%d", i, u, c)
		}
		recs = append(recs, indexRecord{unpadded: int64(u), uncompressed: int64(c)})
	}
	if (p+3)&^3 != len(body) {
		return nil, formatError("index has %d bytes after its records", len(body)-p)
	}
	for ; p < len(body); p++ {
		if body[p] != 0 {
			return nil, formatError("non-zero index padding")
		}
	}
	return recs, nil
}

// blockLoc is where a Block is and what the Index says about it.
type blockLoc struct {
	offset int64 // of its Block Header in the file
	rec    indexRecord
	check  byte
	out    int64 // offset of its first byte in the decompressed output
}

// padded4 rounds up to a multiple of four.
func padded4(n int64) int64 { return (n + 3) &^ 3 }

// locateBlocks reads a whole .xz file from its end: Stream Footers,
// Indexes and Stream Headers, skipping Stream Padding, and returns every
// Block in file order. It reads only headers, footers and indexes.
func locateBlocks(ra io.ReaderAt, size int64) ([]blockLoc, error) {
	if size%4 != 0 {
		return nil, formatError("file size %d is not a multiple of four", size)
	}
	var streams [][]blockLoc
	var buf [streamFooterSize]byte
	pos := size
	for pos > 0 {
		if pos < streamHeaderSize+streamFooterSize+8 {
			if len(streams) == 0 {
				return nil, formatError("file too short")
			}
			// Leading zeros are not stream padding: a file starts with a stream.
			return nil, formatError("%d bytes of garbage before the first stream", pos)
		}
		if _, err := ra.ReadAt(buf[:4], pos-4); err != nil {
			return nil, readErr(err)
		}
		if bytes.Equal(buf[:4], []byte{0, 0, 0, 0}) {
			pos -= 4
			continue
		}
		if _, err := ra.ReadAt(buf[:], pos-streamFooterSize); err != nil {
			return nil, readErr(err)
		}
		check, indexSize, err := parseStreamFooter(buf[:])
		if err != nil {
			return nil, err
		}
		if indexSize > maxIndexSize || indexSize > pos-streamFooterSize-streamHeaderSize {
			return nil, formatError("index of %d bytes does not fit", indexSize)
		}
		indexStart := pos - streamFooterSize - indexSize
		idx := make([]byte, indexSize)
		if _, err := ra.ReadAt(idx, indexStart); err != nil {
			return nil, readErr(err)
		}
		recs, err := parseIndex(idx)
		if err != nil {
			return nil, err
		}
		var blocksSize int64
		for _, r := range recs {
			blocksSize += padded4(r.unpadded)
			if blocksSize > indexStart {
				return nil, formatError("index describes more data than the file holds")
			}
		}
		start := indexStart - blocksSize - streamHeaderSize
		if start < 0 {
			return nil, formatError("index describes more data than the file holds")
		}
		if _, err := ra.ReadAt(buf[:], start); err != nil {
			return nil, readErr(err)
		}
		hcheck, err := parseStreamHeader(buf[:])
		if err != nil {
			return nil, err
		}
		if hcheck != check {
			return nil, formatError("stream header and footer flags differ")
		}
		locs := make([]blockLoc, 0, len(recs))
		off := start + streamHeaderSize
		for _, r := range recs {
			locs = append(locs, blockLoc{offset: off, rec: r, check: check})
			off += padded4(r.unpadded)
		}
		streams = append(streams, locs)
		pos = start
	}
	if len(streams) == 0 {
		return nil, formatError("no stream (empty or all-zero input)")
	}
	var all []blockLoc
	var out int64
	for i := len(streams) - 1; i >= 0; i-- {
		for _, l := range streams[i] {
			l.out = out
			if out += l.rec.uncompressed; out < 0 {
				return nil, formatError("uncompressed size overflows")
			}
			all = append(all, l)
		}
	}
	return all, nil
}

func readErr(err error) error {
	if err == io.EOF {
		return formatError("truncated input")
	}
	return err
}
