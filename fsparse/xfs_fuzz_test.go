package fsparse

import (
	"context"
	"encoding/binary"
	"io"
	"testing"
)

// FuzzXFSSuperblock feeds readXFSSuper arbitrary first sectors and device
// sizes. Whatever it accepts must satisfy the bounds the map relies on.
func FuzzXFSSuperblock(f *testing.F) {
	for _, c := range xrTestdata {
		if c.fstype == "xfs" {
			img := xrImage(f, c.file)
			f.Add(img[:512], int64(len(img)))
		}
	}
	f.Fuzz(func(t *testing.T, sect []byte, size int64) {
		if size < 0 || size > 1<<50 {
			return
		}
		sb, err := readXFSSuper(xrSparse{sect, size}, size)
		if err != nil {
			return
		}
		if sb.dblocks == 0 || sb.dblocks > uint64(size/sb.blockSize) {
			t.Fatalf("accepted %d blocks of %d bytes on a %d-byte device", sb.dblocks, sb.blockSize, size)
		}
		if uint64(sb.agcount-1)*uint64(sb.agblocks) >= sb.dblocks || sb.agLen(sb.agcount-1) > sb.agblocks {
			t.Fatalf("accepted an inconsistent AG layout: %+v", sb)
		}
		_ = sb.info()
	})
}

// xrSparse is a device of size bytes holding head at offset 0 and zeros
// after it, without allocating the device.
type xrSparse struct {
	head []byte
	size int64
}

func (s xrSparse) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= s.size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), s.size-off)
	clear(p[:n])
	if off < int64(len(s.head)) {
		copy(p[:n], s.head[off:])
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// xfsFuzzLen bounds the patch: the fuzzer minimises every new input, so
// small inputs keep it fast.
const xfsFuzzLen = 512

// xfsFuzzBase is a seed image and the offsets of its metadata.
type xfsFuzzBase struct {
	img     []byte
	regions []int64 // superblock, AGF, bnobt root, log start
	sb      *xfsSuper
}

// FuzzXFSImage overwrites the start of the superblock, the AGF, the
// bnobt root or the log of a real small filesystem (see testdata),
// optionally recomputing the v5 checksums so that the checks behind them
// are reached, and maps it: no panic, no hang, and any map it returns is
// sorted, merged and inside the filesystem and the device.
func FuzzXFSImage(f *testing.F) {
	var bases []xfsFuzzBase
	for _, c := range xrTestdata {
		if c.fstype != "xfs" {
			continue
		}
		img := xrImage(f, c.file)
		sb, err := readXFSSuper(xrMem(img), int64(len(img)))
		if err != nil {
			f.Fatal(err)
		}
		root := int64(binary.BigEndian.Uint32(img[sb.sectSize+16:])) * sb.blockSize
		logAt := sb.agOffset(uint32(sb.logstart>>sb.agblklog), uint32(sb.logstart&(1<<sb.agblklog-1)))
		b := xfsFuzzBase{img: img, regions: []int64{0, sb.sectSize, root, logAt}, sb: sb}
		bases = append(bases, b)
		for r, at := range b.regions {
			f.Add(uint8(len(bases)-1), uint8(r), true, img[at:at+xfsFuzzLen])
		}
	}
	f.Fuzz(func(t *testing.T, which, region uint8, fixCRC bool, patch []byte) {
		b := bases[int(which)%len(bases)]
		r := int(region) % len(b.regions)
		at := b.regions[r]
		patch = append([]byte(nil), patch[:min(len(patch), xfsFuzzLen)]...)
		if fixCRC && b.sb.crc() {
			// Lay the patch over a copy of the structure and checksum it.
			var n, crcOff int
			switch r {
			case 0:
				n, crcOff = int(b.sb.sectSize), xfsSBCRCOff
			case 1:
				n, crcOff = int(b.sb.sectSize), xfsAGFCRCOff
			case 2:
				n, crcOff = int(b.sb.blockSize), xfsSBlockCRCOff
			}
			if n > 0 {
				whole := append([]byte(nil), b.img[at:at+int64(n)]...)
				copy(whole, patch)
				xfsSetCRC(whole, crcOff)
				patch = whole
			}
		}
		img := &overlay{base: b.img, patch: patch, at: at}
		size := int64(len(b.img))
		info, used, err := InUse(context.Background(), img, size)
		if err != nil {
			return
		}
		xrCheckMap(t, info, used, size)
		if _, err := Detect(img, size); err != nil {
			t.Fatalf("InUse accepted what Detect refuses: %v", err)
		}
	})
}
