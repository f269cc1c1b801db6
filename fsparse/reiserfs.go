package fsparse

// ReiserFS 3.5 and 3.6: the superblock at 64 KiB, the block bitmaps and
// the journal. A set bit in a bitmap is a block in use; bitmap 0 follows
// the superblock, bitmap i (i >= 1) is block i*blocksize*8, the first
// block it describes. The first 64 KiB (the boot area), the superblock,
// the bitmaps and a journal on the same device are in use whatever the
// bitmaps say; mkreiserfs marks them too.
//
// Reference: reiserfsprogs include/reiserfs_fs.h and reiserfscore/journal.c.
// All integers are little-endian. The pre-3.5 layout with the superblock
// at 8 KiB is not recognised.

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
)

func init() {
	register(filesystem{name: "reiserfs", probe: reiserProbe, detect: reiserDetect, inUse: reiserInUse})
}

const (
	reiserSBOffset   = 64 << 10
	reiserSBSize     = 204 // struct reiserfs_super_block (v2)
	reiserValidFS    = 1   // s_umount_state after a clean unmount
	reiserDescMagic  = "ReIsErLB"
	reiserVersion36  = 2 // s_version of the 3.6 format
	reiserMaxBlockSz = 32768
)

// reiserSuper holds the validated superblock fields.
type reiserSuper struct {
	format       string // "3.5" or "3.6", maybe with " (non-standard journal)"
	blockCount   uint32
	freeBlocks   uint32
	blockSize    int64
	bitmaps      uint32
	journalStart uint32 // first journal block
	journalSize  uint32 // journal blocks, without the header block
	journalDev   uint32 // device number of an external journal, or 0
	// journalHere says the journal lives on this device: always with the
	// standard magics; with ReIsEr3Fs ("non-standard journal") when no
	// device number is recorded and it starts past the superblock (an
	// external journal in a file also records device 0, at block 0).
	journalHere bool
	umountState uint16
	fsState     uint16 // set by reiserfsck when it found corruption
	uuid        [16]byte
	label       string
}

func reiserMagic(b []byte) string {
	switch {
	case bytes.HasPrefix(b, []byte("ReIsErFs\x00")):
		return "3.5"
	case bytes.HasPrefix(b, []byte("ReIsEr2Fs\x00")):
		return "3.6"
	case bytes.HasPrefix(b, []byte("ReIsEr3Fs\x00")):
		return "jr" // either format, with a non-standard journal
	}
	return ""
}

func reiserProbe(r io.ReaderAt, size int64) bool {
	var b [10]byte
	if size < reiserSBOffset+reiserSBSize {
		return false
	}
	if _, err := r.ReadAt(b[:], reiserSBOffset+52); err != nil {
		return false
	}
	return reiserMagic(b[:]) != ""
}

func readReiserSuper(r io.ReaderAt, size int64) (*reiserSuper, error) {
	b := make([]byte, reiserSBSize)
	if err := xrReadFull(r, b, reiserSBOffset, size, "reiserfs", "superblock"); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	sb := &reiserSuper{
		format:       reiserMagic(b[52:62]),
		blockCount:   le.Uint32(b[0:]),
		freeBlocks:   le.Uint32(b[4:]),
		journalStart: le.Uint32(b[12:]),
		journalDev:   le.Uint32(b[16:]),
		journalSize:  le.Uint32(b[20:]),
		blockSize:    int64(le.Uint16(b[44:])),
		umountState:  le.Uint16(b[50:]),
		fsState:      le.Uint16(b[62:]),
	}
	if sb.format == "" {
		return nil, ErrUnknownFilesystem
	}
	bmapNr := uint32(le.Uint16(b[70:]))
	if sb.format == "jr" {
		// s_version tells the format apart.
		sb.format = "3.5 (non-standard journal)"
		if le.Uint16(b[72:]) == reiserVersion36 {
			sb.format = "3.6 (non-standard journal)"
		}
	}
	if le.Uint16(b[72:]) == reiserVersion36 {
		copy(sb.uuid[:], b[84:100])
		sb.label = strings.TrimRight(string(b[100:116]), "\x00")
	}
	bs := sb.blockSize
	switch {
	case !xrIsPow2(uint64(bs)) || bs < 512 || bs > reiserMaxBlockSz:
		return nil, corrupt("reiserfs", "block size %d", bs)
	case sb.blockCount <= uint32(reiserSBOffset/bs)+1:
		return nil, corrupt("reiserfs", "%d blocks leave no room past the superblock", sb.blockCount)
	case int64(sb.blockCount) > size/bs:
		return nil, corrupt("reiserfs", "%d blocks of %d bytes do not fit the %d-byte device", sb.blockCount, bs, size)
	case sb.freeBlocks > sb.blockCount:
		return nil, corrupt("reiserfs", "%d free blocks of %d", sb.freeBlocks, sb.blockCount)
	}
	perBitmap := uint64(bs) * 8
	sb.bitmaps = uint32((uint64(sb.blockCount) + perBitmap - 1) / perBitmap)
	// s_bmap_nr is 16 bits: filesystems with more bitmaps store 0.
	if bmapNr != 0 && bmapNr != sb.bitmaps || bmapNr == 0 && sb.bitmaps < 1<<16 {
		return nil, corrupt("reiserfs", "%d bitmaps recorded, %d blocks need %d", bmapNr, sb.blockCount, sb.bitmaps)
	}
	sb.journalHere = sb.journalDev == 0 && (!strings.Contains(sb.format, "non-standard") || sb.journalStart > uint32(reiserSBOffset/bs))
	if sb.journalHere {
		// The journal's blocks plus its header block.
		end := uint64(sb.journalStart) + uint64(sb.journalSize) + 1
		if sb.journalStart <= uint32(reiserSBOffset/bs) || sb.journalSize == 0 || end > uint64(sb.blockCount) {
			return nil, corrupt("reiserfs", "journal of %d blocks at block %d outside the %d-block filesystem", sb.journalSize, sb.journalStart, sb.blockCount)
		}
	}
	return sb, nil
}

// bitmapBlock returns the block holding bitmap i.
func (sb *reiserSuper) bitmapBlock(i uint32) uint32 {
	if i == 0 {
		return uint32(reiserSBOffset/sb.blockSize) + 1
	}
	return i * uint32(sb.blockSize) * 8
}

func (sb *reiserSuper) info() Info {
	info := Info{
		Filesystem: "reiserfs",
		BlockSize:  sb.blockSize,
		TotalBytes: int64(sb.blockCount) * sb.blockSize,
		Label:      sb.label,
	}
	if sb.uuid != [16]byte{} {
		info.UUID = xrFormatUUID(sb.uuid)
	}
	info.Notes = append(info.Notes, "format "+sb.format)
	if !sb.journalHere {
		info.Notes = append(info.Notes, fmt.Sprintf("external journal (device %#x): it is not in this map; back it up too", sb.journalDev))
	}
	if sb.fsState != 0 {
		info.Notes = append(info.Notes, fmt.Sprintf("reiserfsck marked the filesystem as damaged (s_fs_state %#x)", sb.fsState))
	}
	if sb.umountState != reiserValidFS {
		info.Notes = append(info.Notes, "not cleanly unmounted (s_umount_state)")
	}
	return info
}

// reiserDetect reads the bitmaps too (one block per 128 MiB with 4 KiB
// blocks) so that the used count comes from them; a journal awaiting
// replay is a note here, an error for InUse.
func reiserDetect(r io.ReaderAt, size int64) (Info, error) {
	info, _, err := reiserMap(context.Background(), r, size, true)
	return info, err
}

func reiserInUse(ctx context.Context, r io.ReaderAt, size int64) (Info, []Extent, error) {
	return reiserMap(ctx, r, size, false)
}

func reiserMap(ctx context.Context, r io.ReaderAt, size int64, detect bool) (Info, []Extent, error) {
	sb, err := readReiserSuper(r, size)
	if err != nil {
		return Info{}, nil, err
	}
	info := sb.info()
	bs := sb.blockSize
	blk := func(start, n uint32) Extent { return Extent{int64(start) * bs, int64(n) * bs} }
	// The boot area and the superblock, then each bitmap block, then the
	// journal: in use regardless of the bitmaps.
	used := []Extent{blk(0, uint32(reiserSBOffset/bs)+1)}
	if sb.journalHere {
		replay, err := reiserJournalPending(r, size, sb)
		if err != nil {
			return info, nil, err
		}
		if replay && detect {
			info.Notes = append(info.Notes, "the journal holds transactions not yet replayed: the bitmaps may be stale")
		} else if replay {
			return info, nil, fmt.Errorf("%w: reiserfs: the journal holds transactions not yet replayed (not cleanly unmounted); run reiserfsck or fall back to AllBlocks", ErrNeedsRecovery)
		}
		used = append(used, blk(sb.journalStart, sb.journalSize+1))
	}
	buf := make([]byte, bs)
	perBitmap := uint32(bs) * 8
	for i := uint32(0); i < sb.bitmaps; i++ {
		if err := ctx.Err(); err != nil {
			return info, nil, err
		}
		b := sb.bitmapBlock(i)
		used = append(used, blk(b, 1))
		if err := xrReadFull(r, buf, int64(b)*bs, size, "reiserfs", fmt.Sprintf("bitmap %d", i)); err != nil {
			return info, nil, err
		}
		first := i * perBitmap
		n := min(perBitmap, sb.blockCount-first)
		used = reiserBitRuns(used, buf, first, n, bs)
	}
	used = Merge(used)
	for _, e := range used {
		info.UsedBytes += e.Length
	}
	info.FreeBytes = info.TotalBytes - info.UsedBytes
	if free := uint64(info.FreeBytes / bs); free != uint64(sb.freeBlocks) {
		info.Notes = append(info.Notes, fmt.Sprintf("the superblock counts %d free blocks, the bitmaps %d", sb.freeBlocks, free))
	}
	return info, used, nil
}

// reiserBitRuns appends, as byte extents, the runs of set bits among the
// first n bits of bitmap (bit k of byte j is block first+8j+k).
func reiserBitRuns(es []Extent, bitmap []byte, first, n uint32, bs int64) []Extent {
	runStart, inRun := uint32(0), false
	begin := func(k uint32) {
		if !inRun {
			runStart, inRun = k, true
		}
	}
	end := func(k uint32) {
		if inRun {
			es = append(es, Extent{int64(first+runStart) * bs, int64(k-runStart) * bs})
			inRun = false
		}
	}
	for k := uint32(0); k < n; {
		// Whole 64-bit words of zeros or ones take the fast path.
		if k%64 == 0 && k+64 <= n {
			switch binary.LittleEndian.Uint64(bitmap[k/8:]) {
			case 0:
				end(k)
				k += 64
				continue
			case ^uint64(0):
				begin(k)
				k += 64
				continue
			}
		}
		if bitmap[k/8]&(1<<(k%8)) != 0 {
			begin(k)
		} else {
			end(k)
		}
		k++
	}
	end(n)
	return es
}

// reiserJournalPending reports whether the journal holds a committed
// transaction newer than the last one flushed: the descriptor block at
// j_first_unflushed_offset is valid, belongs to this mount and has a
// matching commit block. Only then would a mount or reiserfsck replay it.
func reiserJournalPending(r io.ReaderAt, size int64, sb *reiserSuper) (bool, error) {
	bs := sb.blockSize
	le := binary.LittleEndian
	hdr := make([]byte, bs)
	hdrBlock := int64(sb.journalStart) + int64(sb.journalSize)
	if err := xrReadFull(r, hdr, hdrBlock*bs, size, "reiserfs", "journal header"); err != nil {
		return false, err
	}
	lastFlushed, unflushed, mountID := le.Uint32(hdr[0:]), le.Uint32(hdr[4:]), le.Uint32(hdr[8:])
	if unflushed >= sb.journalSize {
		return false, corrupt("reiserfs", "journal header: first unflushed block %d of a %d-block journal", unflushed, sb.journalSize)
	}
	desc := make([]byte, bs)
	if err := xrReadFull(r, desc, (int64(sb.journalStart)+int64(unflushed))*bs, size, "reiserfs", "journal descriptor"); err != nil {
		return false, err
	}
	transID, length := le.Uint32(desc[0:]), le.Uint32(desc[4:])
	if string(desc[bs-12:bs-4]) != reiserDescMagic || transID <= lastFlushed || le.Uint32(desc[8:]) != mountID ||
		length == 0 || length >= sb.journalSize {
		return false, nil
	}
	commit := make([]byte, bs)
	commitBlock := int64(sb.journalStart) + (int64(unflushed)+int64(length)+1)%int64(sb.journalSize)
	if err := xrReadFull(r, commit, commitBlock*bs, size, "reiserfs", "journal commit"); err != nil {
		return false, err
	}
	return le.Uint32(commit[0:]) == transID && le.Uint32(commit[4:]) == length, nil
}
