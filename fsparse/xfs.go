package fsparse

// XFS: the superblock, the allocation group free-space headers (AGF) and
// the free-space B+tree indexed by block number (bnobt).
//
// Everything in the data section that the bnobt does not list as free is
// in use: AG headers, the internal log, inode chunks, every B+tree block
// and the blocks on the AG free list (AGFL). The AGFL blocks are reserved
// for B+tree splits and hold no file data, but they are allocated, not
// free: partclone skips them, so its copy holds stale blocks on the free
// list; we copy them.
//
// Accounting: UsedBytes = (dblocks - sum of agf_freeblks) * blocksize. On
// a cleanly unmounted filesystem that is dblocks - sb_fdblocks + the AGFL
// blocks + agf_btreeblks, because sb_fdblocks (what df and partclone's
// "Space in use" use) counts the free lists and the free-space B+tree
// blocks beyond their roots as free space. The superblock counters are
// lazy and stale while mounted; the AGFs are not.
//
// The map covers the data section only: an external log or a realtime
// section, on other devices, is named in Info.Notes. The internal log must
// end with an unmount record or be covered (see xfs_log.go); otherwise the
// free-space trees on disk may lag it and InUse returns ErrNeedsRecovery.
//
// References: xfsprogs libxfs/xfs_format.h and libxfs/xfs_log_format.h,
// and the "XFS Algorithms & Data Structures" document (chapters
// "Superblocks", "AG Free Space Management", "Short Format B+trees",
// "Journaling Log"). All on-disk integers are big-endian.

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
)

func init() {
	register(filesystem{name: "xfs", probe: xfsProbe, detect: xfsDetect, inUse: xfsInUse})
}

const (
	xfsSBMagic          = 0x58465342 // "XFSB"
	xfsAGFMagic         = 0x58414746 // "XAGF"
	xfsABTBMagic        = 0x41425442 // "ABTB": bnobt block, v4
	xfsAB3BMagic        = 0x41423342 // "AB3B": bnobt block, v5 (CRC)
	xfsIncompatMetaUUID = 0x4
	// xfsIncompatNeedsRepair is set while xfs_repair or xfs_admin is
	// rewriting metadata; the kernel refuses to mount such a filesystem.
	xfsIncompatNeedsRepair = 0x10
	// xfsIncompatKnown covers the incompatible features up to zoned
	// realtime devices (xfsprogs 6.15): ftype, sparse inodes, meta_uuid,
	// bigtime, needsrepair, nrext64, exchange-range, parent pointers,
	// metadir, zoned. None changes the AGF or the bnobt; an unknown bit
	// might, so it is refused.
	xfsIncompatKnown = 0x3ff
	// xfsMaxLevels bounds the height of a free-space B+tree. Even with
	// 512-byte blocks and half-full nodes, 2^32 blocks need fewer levels.
	xfsMaxLevels = 16
	// Short-form B+tree block header sizes.
	xfsSBlockHdrV4  = 16
	xfsSBlockHdrV5  = 56
	xfsSBlockCRCOff = 52
	xfsAGFCRCOff    = 216
	xfsSBCRCOff     = 224
)

var xfsCastagnoli = crc32.MakeTable(crc32.Castagnoli)

// xfsSuper holds the superblock fields the map needs, validated.
type xfsSuper struct {
	blockSize   int64
	sectSize    int64
	dblocks     uint64
	rblocks     uint64
	agblocks    uint32
	agcount     uint32
	agblklog    uint
	logstart    uint64 // file system block number (AG-encoded), 0: external
	logblocks   uint32
	version     int // 4 or 5
	uuid        [16]byte
	metaUUID    [16]byte // the UUID stamped in v5 metadata blocks
	label       string
	inprogress  bool
	needsRepair bool
}

func (sb *xfsSuper) crc() bool { return sb.version == 5 }

// agLen returns the number of blocks in AG agno; the last AG is usually
// shorter than agblocks.
func (sb *xfsSuper) agLen(agno uint32) uint32 {
	if agno == sb.agcount-1 {
		return uint32(sb.dblocks - uint64(agno)*uint64(sb.agblocks))
	}
	return sb.agblocks
}

// agOffset returns the byte offset of block agbno of AG agno. XFS block
// numbers encode the AG in the bits above agblklog, so AGs are not
// adjacent in that numbering; on disk they are.
func (sb *xfsSuper) agOffset(agno, agbno uint32) int64 {
	return (int64(agno)*int64(sb.agblocks) + int64(agbno)) * sb.blockSize
}

func xfsProbe(r io.ReaderAt, size int64) bool {
	var b [4]byte
	if size < 512 {
		return false
	}
	if _, err := r.ReadAt(b[:], 0); err != nil {
		return false
	}
	return binary.BigEndian.Uint32(b[:]) == xfsSBMagic
}

// xrReadFull reads exactly len(p) bytes at off, refusing ranges outside the
// device.
func xrReadFull(r io.ReaderAt, p []byte, off, size int64, fs, what string) error {
	if off < 0 || off > size || int64(len(p)) > size-off {
		return corrupt(fs, "%s at byte %d (+%d) lies outside the %d-byte device", what, off, len(p), size)
	}
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("fsparse: %s: reading %s at byte %d: %w", fs, what, off, err)
}

func xrIsPow2(v uint64) bool { return v != 0 && v&(v-1) == 0 }

func readXFSSuper(r io.ReaderAt, size int64) (*xfsSuper, error) {
	// The superblock's fields end before byte 272; its checksum covers a
	// whole sector, read once the sector size is known.
	hdr := make([]byte, 512)
	if err := xrReadFull(r, hdr, 0, size, "xfs", "superblock"); err != nil {
		return nil, err
	}
	be := binary.BigEndian
	if be.Uint32(hdr[0:]) != xfsSBMagic {
		return nil, ErrUnknownFilesystem
	}
	sb := &xfsSuper{
		blockSize:  int64(be.Uint32(hdr[4:])),
		dblocks:    be.Uint64(hdr[8:]),
		rblocks:    be.Uint64(hdr[16:]),
		logstart:   be.Uint64(hdr[48:]),
		agblocks:   be.Uint32(hdr[84:]),
		agcount:    be.Uint32(hdr[88:]),
		logblocks:  be.Uint32(hdr[96:]),
		version:    int(be.Uint16(hdr[100:]) & 0xf),
		sectSize:   int64(be.Uint16(hdr[102:])),
		label:      strings.TrimRight(string(hdr[108:120]), "\x00"),
		agblklog:   uint(hdr[124]),
		inprogress: hdr[126] != 0,
	}
	copy(sb.uuid[:], hdr[32:48])
	sb.metaUUID = sb.uuid
	blocklog, sectlog := uint(hdr[120]), uint(hdr[121])
	switch {
	case sb.version != 4 && sb.version != 5:
		return nil, fmt.Errorf("%w: xfs: superblock version %d (only 4 and 5 are supported)", ErrUnsupported, sb.version)
	case !xrIsPow2(uint64(sb.blockSize)) || sb.blockSize < 512 || sb.blockSize > 65536 || 1<<blocklog != sb.blockSize:
		return nil, corrupt("xfs", "block size %d (log %d)", sb.blockSize, blocklog)
	case !xrIsPow2(uint64(sb.sectSize)) || sb.sectSize < 512 || sb.sectSize > 32768 || sb.sectSize > sb.blockSize || 1<<sectlog != sb.sectSize:
		return nil, corrupt("xfs", "sector size %d (log %d)", sb.sectSize, sectlog)
	case sb.agcount == 0 || sb.agblocks < 16:
		return nil, corrupt("xfs", "%d allocation groups of %d blocks", sb.agcount, sb.agblocks)
	case sb.agblklog > 32 || uint64(1)<<sb.agblklog < uint64(sb.agblocks) || (sb.agblklog > 0 && uint64(1)<<(sb.agblklog-1) >= uint64(sb.agblocks)):
		return nil, corrupt("xfs", "agblklog %d does not fit %d blocks per AG", sb.agblklog, sb.agblocks)
	case sb.dblocks <= uint64(sb.agcount-1)*uint64(sb.agblocks) || sb.dblocks > uint64(sb.agcount)*uint64(sb.agblocks):
		return nil, corrupt("xfs", "%d data blocks do not make %d AGs of %d blocks", sb.dblocks, sb.agcount, sb.agblocks)
	case sb.dblocks > uint64(size/sb.blockSize):
		return nil, corrupt("xfs", "%d blocks of %d bytes do not fit the %d-byte device", sb.dblocks, sb.blockSize, size)
	}
	if sb.version == 5 {
		sect := hdr
		if sb.sectSize > int64(len(hdr)) {
			// Read only the rest of the sector.
			sect = append(hdr, make([]byte, sb.sectSize-int64(len(hdr)))...)
			if err := xrReadFull(r, sect[len(hdr):], int64(len(hdr)), size, "xfs", "superblock"); err != nil {
				return nil, err
			}
		}
		if !xfsCRCOK(sect, xfsSBCRCOff) {
			return nil, corrupt("xfs", "superblock checksum mismatch")
		}
		incompat := be.Uint32(sect[216:])
		if incompat&^xfsIncompatKnown != 0 {
			return nil, fmt.Errorf("%w: xfs: incompatible feature bits %#x", ErrUnsupported, incompat&^xfsIncompatKnown)
		}
		if incompat&xfsIncompatMetaUUID != 0 {
			copy(sb.metaUUID[:], sect[248:264])
		}
		sb.needsRepair = incompat&xfsIncompatNeedsRepair != 0
	}
	if sb.logstart != 0 {
		agno, agbno := uint32(sb.logstart>>sb.agblklog), uint32(sb.logstart&(1<<sb.agblklog-1))
		if agno >= sb.agcount || uint64(agbno)+uint64(sb.logblocks) > uint64(sb.agLen(agno)) || sb.logblocks == 0 {
			return nil, corrupt("xfs", "internal log at block %d (AG %d, block %d) of %d blocks lies outside its AG", sb.logstart, agno, agbno, sb.logblocks)
		}
	}
	return sb, nil
}

// xfsCRCOK checks the CRC32c XFS stores little-endian at off in buf,
// computed over buf with that field zeroed.
func xfsCRCOK(buf []byte, off int) bool {
	want := binary.LittleEndian.Uint32(buf[off:])
	c := crc32.Update(0, xfsCastagnoli, buf[:off])
	c = crc32.Update(c, xfsCastagnoli, []byte{0, 0, 0, 0})
	c = crc32.Update(c, xfsCastagnoli, buf[off+4:])
	return c == want
}

func xrFormatUUID(u [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// notes states what the map does not cover and what the log says; the
// log state is returned for InUse to refuse a dirty log.
func (sb *xfsSuper) notes(r io.ReaderAt, size int64) ([]string, xfsLogState) {
	state := xfsLogClean
	var notes []string
	if sb.logstart == 0 {
		notes = append(notes, "external log: the journal lives on another device, which this map does not cover; back it up too")
	}
	if sb.rblocks > 0 {
		notes = append(notes, fmt.Sprintf("realtime section of %d blocks on another device: this map covers the data section only", sb.rblocks))
	}
	if sb.needsRepair {
		notes = append(notes, "the needsrepair flag is set: xfs_repair was interrupted; run it before trusting this map")
	}
	if sb.inprogress {
		notes = append(notes, "superblock says mkfs did not finish (sb_inprogress)")
	}
	if sb.logstart != 0 {
		var err error
		state, err = xfsLogStateOf(r, size, sb)
		switch {
		case err != nil:
			notes = append(notes, fmt.Sprintf("%s (%v)", xfsDirtyLogNote, err))
		case state == xfsLogDirty:
			notes = append(notes, xfsDirtyLogNote)
		case state == xfsLogCovered:
			notes = append(notes, "log is covered (the filesystem is frozen or idle): metadata is in place")
		}
	} else {
		notes = append(notes, "the state of the external log is not checked")
	}
	return notes, state
}

// xfsDirtyLogNote is the Notes entry for a log that needs recovery.
const xfsDirtyLogNote = "log needs recovery (mounted and not frozen, or not cleanly unmounted): " +
	"the free-space trees on disk may lag the log"

func xfsDetect(r io.ReaderAt, size int64) (Info, error) {
	sb, err := readXFSSuper(r, size)
	if err != nil {
		return Info{}, err
	}
	info := sb.info()
	var free uint64
	agf := make([]byte, sb.sectSize)
	for agno := uint32(0); agno < sb.agcount; agno++ {
		a, err := sb.readAGF(r, size, agno, agf)
		if err != nil {
			return Info{}, err
		}
		free += uint64(a.freeblks)
	}
	info.FreeBytes = int64(free) * sb.blockSize
	info.UsedBytes = info.TotalBytes - info.FreeBytes
	info.Notes, _ = sb.notes(r, size)
	return info, nil
}

func (sb *xfsSuper) info() Info {
	return Info{
		Filesystem: "xfs",
		BlockSize:  sb.blockSize,
		TotalBytes: int64(sb.dblocks) * sb.blockSize,
		Label:      sb.label,
		UUID:       xrFormatUUID(sb.uuid),
	}
}

// xfsAGF holds the AGF fields the map needs.
type xfsAGF struct {
	length, bnoRoot, bnoLevel, freeblks, flcount, btreeblks uint32
}

// readAGF reads and validates the AGF of agno into buf (one sector).
func (sb *xfsSuper) readAGF(r io.ReaderAt, size int64, agno uint32, buf []byte) (xfsAGF, error) {
	off := sb.agOffset(agno, 0) + sb.sectSize
	if err := xrReadFull(r, buf, off, size, "xfs", fmt.Sprintf("AGF of AG %d", agno)); err != nil {
		return xfsAGF{}, err
	}
	be := binary.BigEndian
	a := xfsAGF{
		length:    be.Uint32(buf[12:]),
		bnoRoot:   be.Uint32(buf[16:]),
		bnoLevel:  be.Uint32(buf[28:]),
		flcount:   be.Uint32(buf[48:]),
		freeblks:  be.Uint32(buf[52:]),
		btreeblks: be.Uint32(buf[60:]),
	}
	switch {
	case be.Uint32(buf[0:]) != xfsAGFMagic:
		return a, corrupt("xfs", "AG %d: bad AGF magic %#x", agno, be.Uint32(buf[0:]))
	case be.Uint32(buf[8:]) != agno:
		return a, corrupt("xfs", "AG %d: AGF says it is AG %d", agno, be.Uint32(buf[8:]))
	case a.length != sb.agLen(agno):
		return a, corrupt("xfs", "AG %d: AGF length %d, superblock implies %d", agno, a.length, sb.agLen(agno))
	case a.bnoLevel < 1 || a.bnoLevel > xfsMaxLevels:
		return a, corrupt("xfs", "AG %d: free-space B+tree of %d levels", agno, a.bnoLevel)
	case a.bnoRoot == 0 || a.bnoRoot >= a.length:
		return a, corrupt("xfs", "AG %d: free-space B+tree root %d outside the AG's %d blocks", agno, a.bnoRoot, a.length)
	case a.freeblks > a.length:
		return a, corrupt("xfs", "AG %d: %d free blocks in %d", agno, a.freeblks, a.length)
	}
	if sb.crc() {
		if !xfsCRCOK(buf, xfsAGFCRCOff) {
			return a, corrupt("xfs", "AG %d: AGF checksum mismatch", agno)
		}
		if !bytes.Equal(buf[64:80], sb.metaUUID[:]) {
			return a, corrupt("xfs", "AG %d: AGF belongs to another filesystem (UUID)", agno)
		}
	}
	return a, nil
}

func xfsInUse(ctx context.Context, r io.ReaderAt, size int64) (Info, []Extent, error) {
	sb, err := readXFSSuper(r, size)
	if err != nil {
		return Info{}, nil, err
	}
	info := sb.info()
	var state xfsLogState
	info.Notes, state = sb.notes(r, size)
	if state == xfsLogDirty {
		return info, nil, fmt.Errorf("%w: xfs: the log does not end with an unmount record and is not covered "+
			"(mounted and not frozen, or not cleanly unmounted); freeze it, or mount or xfs_repair it, or fall back to AllBlocks", ErrNeedsRecovery)
	}
	used, free, err := sb.mapAGs(ctx, r, size)
	if err != nil {
		return info, nil, err
	}
	info.FreeBytes = free * sb.blockSize
	info.UsedBytes = info.TotalBytes - info.FreeBytes
	return info, used, nil
}

// mapAGs reads every AGF and walks its bnobt, in AG order, and returns
// the in-use extents and the number of free blocks.
func (sb *xfsSuper) mapAGs(ctx context.Context, r io.ReaderAt, size int64) ([]Extent, int64, error) {
	w := &xfsWalker{sb: sb, r: r, size: size, block: make([]byte, sb.blockSize)}
	var used []Extent
	var free int64
	agf := make([]byte, sb.sectSize)
	for agno := uint32(0); agno < sb.agcount; agno++ {
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		a, err := sb.readAGF(r, size, agno, agf)
		if err != nil {
			return nil, 0, err
		}
		frees, err := w.freeExtents(ctx, agno, a)
		if err != nil {
			return nil, 0, err
		}
		// Everything between the free extents is in use.
		next := uint32(0)
		for _, f := range frees {
			if f.start > next {
				used = append(used, w.extent(agno, next, f.start-next))
			}
			next = f.start + f.count
			free += int64(f.count)
		}
		if next < a.length {
			used = append(used, w.extent(agno, next, a.length-next))
		}
	}
	return Merge(used), free, nil
}

// xfsWalker walks the bnobt of one AG at a time.
type xfsWalker struct {
	sb      *xfsSuper
	r       io.ReaderAt
	size    int64
	block   []byte
	visited map[uint32]bool
	frees   []xfsFree
}

type xfsFree struct{ start, count uint32 }

func (w *xfsWalker) extent(agno, agbno, count uint32) Extent {
	return Extent{Offset: w.sb.agOffset(agno, agbno), Length: int64(count) * w.sb.blockSize}
}

// freeExtents returns the free extents of AG agno in block order, checked
// against the AG's bounds, each other and the AGF's free count.
func (w *xfsWalker) freeExtents(ctx context.Context, agno uint32, a xfsAGF) ([]xfsFree, error) {
	w.visited = map[uint32]bool{}
	w.frees = w.frees[:0]
	if err := w.walk(ctx, agno, a, a.bnoRoot, a.bnoLevel-1, true); err != nil {
		return nil, err
	}
	var sum uint64
	for _, f := range w.frees {
		sum += uint64(f.count)
	}
	if sum != uint64(a.freeblks) {
		return nil, corrupt("xfs", "AG %d: free-space B+tree holds %d free blocks, AGF says %d", agno, sum, a.freeblks)
	}
	return w.frees, nil
}

// walk visits the bnobt block agbno, expected at the given level, and its
// children left to right, appending leaf records to w.frees.
func (w *xfsWalker) walk(ctx context.Context, agno uint32, a xfsAGF, agbno, level uint32, root bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if agbno == 0 || agbno >= a.length {
		return corrupt("xfs", "AG %d: free-space B+tree block %d outside the AG's %d blocks", agno, agbno, a.length)
	}
	// A block seen twice means a cycle or a shared subtree; the set holds
	// at most one entry per block of the AG.
	if w.visited[agbno] {
		return corrupt("xfs", "AG %d: free-space B+tree block %d reached twice", agno, agbno)
	}
	w.visited[agbno] = true
	off := w.sb.agOffset(agno, agbno)
	buf := w.block
	if err := xrReadFull(w.r, buf, off, w.size, "xfs", fmt.Sprintf("free-space B+tree block %d of AG %d", agbno, agno)); err != nil {
		return err
	}
	be := binary.BigEndian
	hdr, magic := xfsSBlockHdrV4, uint32(xfsABTBMagic)
	if w.sb.crc() {
		hdr, magic = xfsSBlockHdrV5, xfsAB3BMagic
	}
	gotLevel, n := uint32(be.Uint16(buf[4:])), int(be.Uint16(buf[6:]))
	switch {
	case be.Uint32(buf) != magic:
		return corrupt("xfs", "AG %d block %d: bad free-space B+tree magic %#x", agno, agbno, be.Uint32(buf))
	case gotLevel != level:
		return corrupt("xfs", "AG %d block %d: B+tree level %d, expected %d", agno, agbno, gotLevel, level)
	}
	if w.sb.crc() {
		switch {
		case !xfsCRCOK(buf, xfsSBlockCRCOff):
			return corrupt("xfs", "AG %d block %d: B+tree block checksum mismatch", agno, agbno)
		case be.Uint64(buf[16:]) != uint64(off/512):
			return corrupt("xfs", "AG %d block %d: B+tree block says it lives at sector %d", agno, agbno, be.Uint64(buf[16:]))
		case !bytes.Equal(buf[32:48], w.sb.metaUUID[:]):
			return corrupt("xfs", "AG %d block %d: B+tree block belongs to another filesystem (UUID)", agno, agbno)
		case be.Uint32(buf[48:]) != agno:
			return corrupt("xfs", "AG %d block %d: B+tree block owned by AG %d", agno, agbno, be.Uint32(buf[48:]))
		}
	}
	body := len(buf) - hdr
	if level == 0 {
		if n > body/8 || (n == 0 && !root) {
			return corrupt("xfs", "AG %d block %d: %d records in a leaf", agno, agbno, n)
		}
		for i := 0; i < n; i++ {
			rec := buf[hdr+8*i:]
			start, count := be.Uint32(rec), be.Uint32(rec[4:])
			var prevEnd uint32
			if k := len(w.frees); k > 0 {
				prevEnd = w.frees[k-1].start + w.frees[k-1].count
			}
			if count == 0 || start < prevEnd || start == 0 || uint64(start)+uint64(count) > uint64(a.length) {
				return corrupt("xfs", "AG %d block %d: free extent [%d,+%d) out of order or outside the AG's %d blocks", agno, agbno, start, count, a.length)
			}
			w.frees = append(w.frees, xfsFree{start, count})
		}
		return nil
	}
	maxrecs := body / 12
	if n == 0 || n > maxrecs {
		return corrupt("xfs", "AG %d block %d: %d pointers in a node (at most %d)", agno, agbno, n, maxrecs)
	}
	// The block buffer is reused below, so copy the pointers out first.
	ptrs := make([]uint32, n)
	for i := range ptrs {
		ptrs[i] = be.Uint32(buf[hdr+8*maxrecs+4*i:])
	}
	for _, p := range ptrs {
		if err := w.walk(ctx, agno, a, p, level-1, false); err != nil {
			return err
		}
	}
	return nil
}
