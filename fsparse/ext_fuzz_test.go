package fsparse

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"
)

// FuzzExtSuperblock feeds parseExtSuper arbitrary superblocks and device
// sizes. Whatever it accepts must satisfy the bounds the map relies on.
func FuzzExtSuperblock(f *testing.F) {
	for _, tc := range extTestdata {
		img := extImage(f, tc.file)
		f.Add(img[1024:2048], int64(len(img)))
	}
	f.Fuzz(func(t *testing.T, sb []byte, size int64) {
		sb = append(bytes.Clone(sb[:min(len(sb), extSuperSize)]), make([]byte, extSuperSize-min(len(sb), extSuperSize))...)
		extFixSuperCsum(sb) // so that fuzzing reaches the checks behind the checksum
		s, err := parseExtSuper(sb, size)
		if err != nil {
			return
		}
		if s.blocksCount == 0 || s.blocksCount > uint64(size/s.blockSize) {
			t.Fatalf("accepted %d blocks of %d bytes on a %d-byte device", s.blocksCount, s.blockSize, size)
		}
		if s.groups == 0 || s.descPerBlock == 0 || s.firstDataBlock+1+s.oldDescBlocks() > s.blocksCount {
			t.Fatalf("accepted an inconsistent layout: %+v", s)
		}
		_ = s.info()
	})
}

// The image fuzzer overwrites extFuzzLen bytes at extFuzzOff of a seed
// image: with 1 KiB blocks, the superblock and the group descriptor
// block. Kept small because the fuzzer minimises every new input.
const (
	extFuzzOff = 1024
	extFuzzLen = 2048
)

// FuzzExtImage overwrites the superblock and group descriptors of a real,
// small filesystem (see testdata) with fuzzed bytes and maps it: no panic,
// no hang, and any map it returns is sorted, merged and inside the device.
func FuzzExtImage(f *testing.F) {
	bases := make([][]byte, len(extTestdata))
	for i, tc := range extTestdata {
		bases[i] = extImage(f, tc.file)
		f.Add(uint8(i), bases[i][extFuzzOff:extFuzzOff+extFuzzLen])
	}
	f.Fuzz(func(t *testing.T, which uint8, head []byte) {
		base := bases[int(which)%len(bases)]
		patch := bytes.Clone(head[:min(len(head), extFuzzLen)])
		if len(patch) >= extSuperSize {
			// Reach the checks behind the superblock checksum, and
			// with the high bit of which set, those behind the bitmaps'.
			extFixSuperCsum(patch[:extSuperSize])
			if which&0x80 != 0 {
				extFixBitmapCsums(patch, base)
			}
		}
		img := &overlay{patch: patch, at: extFuzzOff, base: base}
		info, es, err := InUse(context.Background(), img, int64(len(base)))
		if err != nil {
			return
		}
		var prev int64 = -1
		var used int64
		for _, e := range es {
			if e.Length <= 0 || e.Offset <= prev || e.End() > info.TotalBytes || info.TotalBytes > int64(len(base)) {
				t.Fatalf("bad extent %+v (total %d)", e, info.TotalBytes)
			}
			prev = e.End()
			used += e.Length
		}
		if used != info.UsedBytes || info.UsedBytes+info.FreeBytes != info.TotalBytes {
			t.Fatalf("used %d, extents sum %d, free %d, total %d", info.UsedBytes, used, info.FreeBytes, info.TotalBytes)
		}
	})
}

// FuzzExtJournal overwrites the start of the journal (its superblock and
// first descriptor blocks) of a real filesystem needing recovery and maps
// it: the in-memory replay must not panic or hang, and whatever it maps
// must be well formed.
func FuzzExtJournal(f *testing.F) {
	base := extImage(f, "ext4-1k-needs-recovery.img.gz")
	s, err := parseExtSuper(base[1024:2048], int64(len(base)))
	if err != nil {
		f.Fatal(err)
	}
	// The journal inode's first block, found the way extReplay finds it.
	d := base[s.descBlock(0)*uint64(s.blockSize):]
	m := &extMapper{s: s, r: bytes.NewReader(base), journalTable: uint64(binary.LittleEndian.Uint32(d[8:]))}
	if err := m.addJournal(); err != nil || len(m.journal) == 0 {
		f.Fatalf("walking the journal inode: %v", err)
	}
	at := int64(m.journal[0].physical) * s.blockSize
	const n = 3 << 10
	f.Add(base[at : at+n])
	f.Fuzz(func(t *testing.T, patch []byte) {
		img := &overlay{patch: patch[:min(len(patch), n)], at: at, base: base}
		info, es, err := InUse(context.Background(), img, int64(len(base)))
		if err != nil {
			return
		}
		var prev int64 = -1
		for _, e := range es {
			if e.Length <= 0 || e.Offset <= prev || e.End() > info.TotalBytes {
				t.Fatalf("bad extent %+v (total %d)", e, info.TotalBytes)
			}
			prev = e.End()
		}
	})
}

// extFixSuperCsum stores the right metadata_csum checksum in a superblock.
func extFixSuperCsum(sb []byte) {
	binary.LittleEndian.PutUint32(sb[0x3FC:], extCrc32c(^uint32(0), sb[:0x3FC]))
}

// extFixBitmapCsums stores, in the descriptors that follow the superblock
// in patch (1 KiB blocks: the descriptor block is patch[1024:2048]), the
// checksums of the bitmaps they point to in base, then their own.
func extFixBitmapCsums(patch, base []byte) {
	s, err := parseExtSuper(patch[:extSuperSize], int64(len(base)))
	if err != nil || !s.metadataCsum || s.blockSize != 1024 || len(patch) < 2*1024 {
		return
	}
	le := binary.LittleEndian
	gdt := patch[1024:min(len(patch), 2048)]
	for off := uint64(0); off+s.descSize <= uint64(len(gdt)); off += s.descSize {
		d := gdt[off : off+s.descSize]
		bb := uint64(le.Uint32(d[0:]))
		if s.descSize >= 64 {
			bb |= uint64(le.Uint32(d[0x20:])) << 32
		}
		if bb >= uint64(len(base))/1024 {
			continue
		}
		c := extCrc32c(s.csumSeed, base[bb*1024:bb*1024+s.clustersPerGroup/8])
		le.PutUint16(d[0x18:], uint16(c))
		if s.descSize >= 64 {
			le.PutUint16(d[0x38:], uint16(c>>16))
		}
		le.PutUint16(d[0x1E:], s.extDescCsum(off/s.descSize, d))
	}
}
