package fsparse

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
)

// xrMem is an image in memory.
type xrMem []byte

func (m xrMem) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= int64(len(m)) {
		return 0, io.EOF
	}
	n := copy(p, m[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// xfsSetCRC stores the CRC32c of buf, with the field zeroed, at off.
func xfsSetCRC(buf []byte, off int) {
	binary.LittleEndian.PutUint32(buf[off:], 0)
	binary.LittleEndian.PutUint32(buf[off:], crc32.Checksum(buf, xfsCastagnoli))
}

// xfsTestImage is a fresh one-AG v5 XFS with 1 KiB blocks, in memory,
// with its superblock and the offsets the mutations need.
type xfsTestImage struct {
	img    xrMem
	sb     *xfsSuper
	agf    int // byte offset of the AGF
	root   int // byte offset of the bnobt root
	rootNo uint32
}

func newXFSTestImage(t *testing.T, args ...string) *xfsTestImage {
	t.Helper()
	path := xfsImage(t, 32<<20, append([]string{"-b", "size=1024", "-d", "agcount=1"}, args...)...)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	x := &xfsTestImage{img: b}
	if x.sb, err = readXFSSuper(x.img, int64(len(b))); err != nil {
		t.Fatal(err)
	}
	x.agf = int(x.sb.sectSize)
	x.rootNo = binary.BigEndian.Uint32(b[x.agf+16:])
	x.root = int(x.rootNo) * int(x.sb.blockSize)
	return x
}

func (x *xfsTestImage) clone() *xfsTestImage {
	c := *x
	c.img = bytes.Clone(x.img)
	return &c
}

func (x *xfsTestImage) fixAGF() { xfsSetCRC(x.img[x.agf:x.agf+int(x.sb.sectSize)], xfsAGFCRCOff) }
func (x *xfsTestImage) fixBlock(off int) {
	xfsSetCRC(x.img[off:off+int(x.sb.blockSize)], xfsSBlockCRCOff)
}
func (x *xfsTestImage) fixSB() { xfsSetCRC(x.img[:x.sb.sectSize], xfsSBCRCOff) }

func (x *xfsTestImage) inUse() (Info, []Extent, error) {
	return InUse(context.Background(), x.img, int64(len(x.img)))
}

// twoLevel rebuilds the bnobt as a root node over two leaves, taking the
// last two blocks of the last free extent for the leaves, as XFS would
// take them from the free list. It returns the blocks used for leaves.
func (x *xfsTestImage) twoLevel(t *testing.T) (uint32, uint32) {
	t.Helper()
	be := binary.BigEndian
	b, bs := x.img, int(x.sb.blockSize)
	n := int(be.Uint16(b[x.root+6:]))
	if n < 2 {
		t.Fatalf("fresh image has %d free extents; need 2", n)
	}
	type rec struct{ start, count uint32 }
	recs := make([]rec, n)
	for i := range recs {
		o := x.root + xfsSBlockHdrV5 + 8*i
		recs[i] = rec{be.Uint32(b[o:]), be.Uint32(b[o+4:])}
	}
	last := &recs[n-1]
	if last.count < 3 {
		t.Fatalf("last free extent has %d blocks", last.count)
	}
	l1, l2 := last.start+last.count-2, last.start+last.count-1
	last.count -= 2
	writeHdr := func(blk uint32, level, numrecs uint16, left, right uint32) int {
		o := int(blk) * bs
		clear(b[o : o+bs])
		be.PutUint32(b[o:], xfsAB3BMagic)
		be.PutUint16(b[o+4:], level)
		be.PutUint16(b[o+6:], numrecs)
		be.PutUint32(b[o+8:], left)
		be.PutUint32(b[o+12:], right)
		be.PutUint64(b[o+16:], uint64(o/512))
		copy(b[o+32:o+48], x.sb.metaUUID[:])
		be.PutUint32(b[o+48:], 0)
		return o
	}
	half := n / 2
	for i, part := range [][]rec{recs[:half], recs[half:]} {
		blk, left, right := l1, uint32(0xffffffff), l2
		if i == 1 {
			blk, left, right = l2, l1, 0xffffffff
		}
		o := writeHdr(blk, 0, uint16(len(part)), left, right)
		for j, r := range part {
			be.PutUint32(b[o+xfsSBlockHdrV5+8*j:], r.start)
			be.PutUint32(b[o+xfsSBlockHdrV5+8*j+4:], r.count)
		}
		x.fixBlock(o)
	}
	o := writeHdr(x.rootNo, 1, 2, 0xffffffff, 0xffffffff)
	maxrecs := (bs - xfsSBlockHdrV5) / 12
	for i, r := range []rec{recs[0], recs[half]} {
		be.PutUint32(b[o+xfsSBlockHdrV5+8*i:], r.start)
		be.PutUint32(b[o+xfsSBlockHdrV5+8*i+4:], r.count)
	}
	be.PutUint32(b[o+xfsSBlockHdrV5+8*maxrecs:], l1)
	be.PutUint32(b[o+xfsSBlockHdrV5+8*maxrecs+4:], l2)
	x.fixBlock(o)
	be.PutUint32(b[x.agf+28:], 2)                         // bnolevel
	be.PutUint32(b[x.agf+52:], be.Uint32(b[x.agf+52:])-2) // freeblks
	x.fixAGF()
	return l1, l2
}

// rootPtr returns the offset of the i-th pointer of the two-level root.
func (x *xfsTestImage) rootPtr(i int) int {
	maxrecs := (int(x.sb.blockSize) - xfsSBlockHdrV5) / 12
	return x.root + xfsSBlockHdrV5 + 8*maxrecs + 4*i
}

// TestXFSTwoLevelTree walks a two-level bnobt built by hand: the map is the
// fresh one plus the two leaf blocks.
func TestXFSTwoLevelTree(t *testing.T) {
	x := newXFSTestImage(t)
	_, before, err := x.inUse()
	if err != nil {
		t.Fatal(err)
	}
	two := x.clone()
	l1, l2 := two.twoLevel(t)
	_, after, err := two.inUse()
	if err != nil {
		t.Fatal(err)
	}
	bs := x.sb.blockSize
	want := Merge(append(slices.Clone(before), Extent{int64(l1) * bs, bs}, Extent{int64(l2) * bs, bs}))
	if !slices.Equal(after, want) {
		t.Fatalf("two-level map %v, want %v", after, want)
	}
}

// TestXFSCorrupt damages one field at a time, fixing checksums so that the
// deeper checks are reached, and expects ErrCorrupt naming the problem.
func TestXFSCorrupt(t *testing.T) {
	base := newXFSTestImage(t)
	be := binary.BigEndian
	two := base.clone()
	l1, _ := two.twoLevel(t)
	for _, c := range []struct {
		name   string
		from   *xfsTestImage
		mutate func(x *xfsTestImage)
		want   string
	}{
		{"sb checksum", base, func(x *xfsTestImage) { x.img[110] ^= 1 }, "superblock checksum"},
		{"truncated device", base, func(x *xfsTestImage) { x.img = x.img[:len(x.img)/2] }, "do not fit"},
		{"agcount too big", base, func(x *xfsTestImage) { be.PutUint32(x.img[88:], 1000); x.fixSB() }, "AGs"},
		{"block size", base, func(x *xfsTestImage) { be.PutUint32(x.img[4:], 3000); x.fixSB() }, "block size"},
		{"log outside AG", base, func(x *xfsTestImage) { be.PutUint32(x.img[96:], 1<<30); x.fixSB() }, "internal log"},
		{"AGF checksum", base, func(x *xfsTestImage) { x.img[x.agf+60] ^= 1 }, "AGF checksum"},
		{"AGF length", base, func(x *xfsTestImage) { be.PutUint32(x.img[x.agf+12:], 7); x.fixAGF() }, "AGF length"},
		{"bnobt levels", base, func(x *xfsTestImage) { be.PutUint32(x.img[x.agf+28:], 40); x.fixAGF() }, "levels"},
		{"bnobt root outside", base, func(x *xfsTestImage) { be.PutUint32(x.img[x.agf+16:], 1<<31); x.fixAGF() }, "outside"},
		{"AGF free count", base, func(x *xfsTestImage) {
			be.PutUint32(x.img[x.agf+52:], be.Uint32(x.img[x.agf+52:])-1)
			x.fixAGF()
		}, "AGF says"},
		{"leaf numrecs", base, func(x *xfsTestImage) { be.PutUint16(x.img[x.root+6:], 0xffff); x.fixBlock(x.root) }, "records in a leaf"},
		{"leaf checksum", base, func(x *xfsTestImage) { x.img[x.root+xfsSBlockHdrV5] ^= 1 }, "checksum"},
		{"record past AG end", base, func(x *xfsTestImage) {
			be.PutUint32(x.img[x.root+xfsSBlockHdrV5+4:], 1<<31)
			x.fixBlock(x.root)
		}, "outside the AG"},
		// The trap: blocks between the short last AG's end and agblocks
		// do not exist, even though AG-relative numbers reach there.
		{"free extent beyond the short last AG", base, func(x *xfsTestImage) {
			short := x.sb.dblocks - 16
			be.PutUint64(x.img[8:], short)
			x.fixSB()
			be.PutUint32(x.img[x.agf+12:], uint32(short))
			x.fixAGF()
		}, "outside the AG's"},
		{"records overlap", base, func(x *xfsTestImage) {
			copy(x.img[x.root+xfsSBlockHdrV5+8:x.root+xfsSBlockHdrV5+16], x.img[x.root+xfsSBlockHdrV5:])
			x.fixBlock(x.root)
		}, "out of order"},
		{"block elsewhere", base, func(x *xfsTestImage) { be.PutUint64(x.img[x.root+16:], 3); x.fixBlock(x.root) }, "lives at sector"},
		{"foreign block", base, func(x *xfsTestImage) { x.img[x.root+40] ^= 1; x.fixBlock(x.root) }, "another filesystem"},
		{"cycle to a leaf", two, func(x *xfsTestImage) { be.PutUint32(x.img[x.rootPtr(1):], l1); x.fixBlock(x.root) }, "reached twice"},
		{"cycle to the root", two, func(x *xfsTestImage) { be.PutUint32(x.img[x.rootPtr(1):], x.rootNo); x.fixBlock(x.root) }, "reached twice"},
		{"null pointer", two, func(x *xfsTestImage) { be.PutUint32(x.img[x.rootPtr(0):], 0); x.fixBlock(x.root) }, "outside"},
		{"empty node", two, func(x *xfsTestImage) { be.PutUint16(x.img[x.root+6:], 0); x.fixBlock(x.root) }, "pointers in a node"},
		{"tree deeper than AGF says", two, func(x *xfsTestImage) { be.PutUint32(x.img[x.agf+28:], 3); x.fixAGF() }, "expected 2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			x := c.from.clone()
			c.mutate(x)
			_, _, err := x.inUse()
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("InUse: %v; want ErrCorrupt mentioning %q", err, c.want)
			}
		})
	}
}

// TestXFSUnknownFeature: an incompatible feature this package does not
// know might change the layout it reads, so it is refused as unsupported;
// needsrepair is known and noted.
func TestXFSUnknownFeature(t *testing.T) {
	base := newXFSTestImage(t)
	be := binary.BigEndian
	x := base.clone()
	be.PutUint32(x.img[216:], be.Uint32(x.img[216:])|1<<20)
	x.fixSB()
	if _, _, err := x.inUse(); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("unknown incompat bit: %v", err)
	}
	x = base.clone()
	be.PutUint32(x.img[216:], be.Uint32(x.img[216:])|xfsIncompatNeedsRepair)
	x.fixSB()
	info, _, err := x.inUse()
	if err != nil || !strings.Contains(strings.Join(info.Notes, " "), "needsrepair") {
		t.Fatalf("needsrepair: %v, notes %q", err, info.Notes)
	}
}

// xrRecorder records every read.
type xrRecorder struct {
	r     io.ReaderAt
	reads []Extent
}

func (c *xrRecorder) ReadAt(p []byte, off int64) (int, error) {
	c.reads = append(c.reads, Extent{off, int64(len(p))})
	return c.r.ReadAt(p, off)
}

// TestXFSReadsMetadataOnce: outside the log, whose head search may touch
// a block twice, and apart from the registry's probes (a few bytes of
// each candidate superblock), no byte is read twice by InUse, and the AGs
// are visited in device order.
func TestXFSReadsMetadataOnce(t *testing.T) {
	two := newXFSTestImage(t)
	two.twoLevel(t)
	for name, img := range map[string][]byte{"v4-2AGs": xrImage(t, "xfs-v4-512.img.gz"), "v5-two-level": two.img} {
		t.Run(name, func(t *testing.T) {
			sb, err := readXFSSuper(xrMem(img), int64(len(img)))
			if err != nil {
				t.Fatal(err)
			}
			logStart := sb.agOffset(uint32(sb.logstart>>sb.agblklog), uint32(sb.logstart&(1<<sb.agblklog-1)))
			log := Extent{logStart, int64(sb.logblocks) * sb.blockSize}
			rec := &xrRecorder{r: xrMem(img)}
			if _, _, err := InUse(context.Background(), rec, int64(len(img))); err != nil {
				t.Fatal(err)
			}
			var rest []Extent
			for _, e := range rec.reads {
				if e.Offset >= log.Offset && e.End() <= log.End() || e.Length < 64 {
					continue
				}
				rest = append(rest, e)
			}
			var total int64
			for _, e := range rest {
				total += e.Length
			}
			merged := Merge(slices.Clone(rest))
			var once int64
			for _, e := range merged {
				once += e.Length
			}
			if once != total {
				t.Fatalf("read %d bytes outside the log, %d distinct: %v", total, once, rest)
			}
			// AGFs in AG order.
			prev := int64(-1)
			for _, e := range rest {
				if e.Length == sb.sectSize && (e.Offset-sb.sectSize)%(int64(sb.agblocks)*sb.blockSize) == 0 {
					if e.Offset <= prev {
						t.Fatalf("AGF at %d read after %d", e.Offset, prev)
					}
					prev = e.Offset
				}
			}
		})
	}
}
