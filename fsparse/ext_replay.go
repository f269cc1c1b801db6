package fsparse

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sort"
)

// A filesystem with needs_recovery set has committed transactions in its
// journal that are not yet written in place: its bitmaps on disk can show
// blocks as free that the replayed journal marks in use, and a backup made
// from them would lose those blocks' data (partclone falls into this).
// extReplay reads the jbd2 journal as e2fsck's recovery does (scan, collect
// revokes, replay committed transactions in order) but only in memory: it
// returns a reader that sees each journaled block as recovery would write
// it. Nothing is written. The format is the kernel's
// Documentation/filesystems/ext4/journal.rst.

const (
	jbdMagic = 0xC03B3998

	jbdDescriptor = 1
	jbdCommit     = 2
	jbdSuperV1    = 3
	jbdSuperV2    = 4
	jbdRevoke     = 5

	jbdIncompatRevoke      = 0x1
	jbdIncompat64Bit       = 0x2
	jbdIncompatAsyncCommit = 0x4
	jbdIncompatCsumV2      = 0x8
	jbdIncompatCsumV3      = 0x10
	jbdIncompatFastCommit  = 0x20
	jbdIncompatKnown       = jbdIncompatRevoke | jbdIncompat64Bit | jbdIncompatAsyncCommit | jbdIncompatCsumV2 | jbdIncompatCsumV3

	jbdFlagEscape   = 0x1
	jbdFlagSameUUID = 0x2
	jbdFlagLastTag  = 0x8
)

// extReplayed is where the newest committed copy of a block lives in the
// journal.
type extReplayed struct {
	journal uint64 // physical block
	escape  bool   // its first four bytes were the jbd2 magic, zeroed in the log
}

// extReplayReader reads as the device would read after journal recovery.
type extReplayReader struct {
	r      io.ReaderAt
	bs     int64
	blocks map[uint64]extReplayed
}

func (o *extReplayReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := o.r.ReadAt(p, off)
	if n == 0 {
		return n, err
	}
	tmp := make([]byte, o.bs)
	for b := off / o.bs; b*o.bs < off+int64(n); b++ {
		e, ok := o.blocks[uint64(b)]
		if !ok {
			continue
		}
		if err := extReadFull(o.r, tmp, int64(e.journal)*o.bs); err != nil {
			return 0, fmt.Errorf("reading the journal's copy of block %d: %w", b, err)
		}
		if e.escape {
			binary.BigEndian.PutUint32(tmp, jbdMagic)
		}
		lo, hi := max(off, b*o.bs), min(off+int64(n), (b+1)*o.bs)
		copy(p[lo-off:hi-off], tmp[lo-b*o.bs:hi-b*o.bs])
	}
	return n, err
}

// extReplay returns a reader of r as it will be after journal recovery and
// the number of committed transactions it replays. An error means the
// journal cannot be replayed here; the caller reports ErrNeedsRecovery.
func extReplay(ctx context.Context, s *extSuper, r io.ReaderAt) (io.ReaderAt, int, error) {
	if s.journalInum == 0 {
		return nil, 0, fmt.Errorf("the journal is on another device")
	}
	// Find the journal inode's table from its group descriptor.
	g := uint64(s.journalInum-1) / s.inodesPerGroup
	d := make([]byte, s.descSize)
	if err := extReadFull(r, d, int64(s.descBlock(g/s.descPerBlock))*s.blockSize+int64(g%s.descPerBlock*s.descSize)); err != nil {
		return nil, 0, err
	}
	le := binary.LittleEndian
	grp := extGroup{n: g, blockBitmap: s.firstDataBlock, inodeBitmap: s.firstDataBlock, inodeTable: uint64(le.Uint32(d[8:]))}
	if s.descSize >= 64 {
		grp.inodeTable |= uint64(le.Uint32(d[0x28:])) << 32
	}
	if err := s.checkGroup(&grp); err != nil {
		return nil, 0, err
	}
	m := &extMapper{s: s, r: r, journalTable: grp.inodeTable}
	if err := m.addJournal(); err != nil {
		return nil, 0, err
	}
	j := &extJournal{s: s, r: r, runs: m.journal}
	sort.Slice(j.runs, func(a, b int) bool { return j.runs[a].logical < j.runs[b].logical })
	blocks, n, err := j.replay(ctx)
	if err != nil {
		return nil, 0, err
	}
	return &extReplayReader{r: r, bs: s.blockSize, blocks: blocks}, n, nil
}

type extJournal struct {
	s    *extSuper
	r    io.ReaderAt
	runs []extRun
	buf  []byte
}

// phys maps logical block l of the journal to the device.
func (j *extJournal) phys(l uint64) (uint64, error) {
	i := sort.Search(len(j.runs), func(i int) bool { return j.runs[i].logical+j.runs[i].n > l })
	if i == len(j.runs) || j.runs[i].logical > l {
		return 0, fmt.Errorf("journal block %d is a hole", l)
	}
	return j.runs[i].physical + (l - j.runs[i].logical), nil
}

// read returns logical block l of the journal (valid until the next read).
func (j *extJournal) read(l uint64) ([]byte, uint64, error) {
	phys, err := j.phys(l)
	if err != nil {
		return nil, 0, err
	}
	if j.buf == nil {
		j.buf = make([]byte, j.s.blockSize)
	}
	if err := extReadFull(j.r, j.buf, int64(phys)*j.s.blockSize); err != nil {
		return nil, 0, fmt.Errorf("reading journal block %d: %w", l, err)
	}
	return j.buf, phys, nil
}

// replay scans the log from s_start and returns, for each block recovery
// would write, the newest committed copy not revoked later.
func (j *extJournal) replay(ctx context.Context) (map[uint64]extReplayed, int, error) {
	be := binary.BigEndian
	sb, _, err := j.read(0)
	if err != nil {
		return nil, 0, err
	}
	if be.Uint32(sb[0:]) != jbdMagic || (be.Uint32(sb[4:]) != jbdSuperV1 && be.Uint32(sb[4:]) != jbdSuperV2) {
		return nil, 0, fmt.Errorf("no jbd2 superblock at the start of the journal")
	}
	if bs := be.Uint32(sb[0xC:]); int64(bs) != j.s.blockSize {
		return nil, 0, fmt.Errorf("journal block size %d is not the filesystem's %d", bs, j.s.blockSize)
	}
	maxlen, first, seq, start := uint64(be.Uint32(sb[0x10:])), uint64(be.Uint32(sb[0x14:])), be.Uint32(sb[0x18:]), uint64(be.Uint32(sb[0x1C:]))
	var incompat uint32
	if be.Uint32(sb[4:]) == jbdSuperV2 {
		incompat = be.Uint32(sb[0x28:])
	}
	if incompat&^jbdIncompatKnown != 0 {
		return nil, 0, fmt.Errorf("journal features %#x (fast commit is %#x) cannot be replayed here", incompat&^jbdIncompatKnown, jbdIncompatFastCommit)
	}
	var mapped uint64
	for _, r := range j.runs {
		mapped = max(mapped, r.logical+r.n)
	}
	if maxlen > mapped || first == 0 || first >= maxlen {
		return nil, 0, fmt.Errorf("journal of %d blocks with first log block %d, but the inode maps %d", maxlen, first, mapped)
	}
	if start == 0 {
		return map[uint64]extReplayed{}, 0, nil // nothing to replay
	}
	if start < first || start >= maxlen {
		return nil, 0, fmt.Errorf("log start %d outside [%d, %d)", start, first, maxlen)
	}
	is64 := incompat&jbdIncompat64Bit != 0
	csum := incompat&(jbdIncompatCsumV2|jbdIncompatCsumV3) != 0
	tagBytes := 12
	switch {
	case incompat&jbdIncompatCsumV3 != 0:
		tagBytes = 16
	case incompat&jbdIncompatCsumV2 != 0:
		tagBytes = 14
		if !is64 {
			tagBytes -= 4
		}
	case !is64:
		tagBytes = 8
	}
	wrap := func(l uint64) uint64 {
		if l >= maxlen {
			return l - maxlen + first
		}
		return l
	}

	type write struct {
		fs uint64
		at extReplayed
		tx uint32
	}
	var writes, pendingW []write
	revoked := map[uint64]uint32{}
	// Revokes of blocks beyond the filesystem are meaningless and not
	// kept, so that these maps stay within the block count.
	pendingR := map[uint64]uint32{}
	txns := 0
	next := start
scan:
	for steps := uint64(0); steps < maxlen; steps++ {
		if steps%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, 0, err
			}
		}
		h, _, err := j.read(next)
		if err != nil {
			return nil, 0, err
		}
		if be.Uint32(h[0:]) != jbdMagic || be.Uint32(h[8:]) != seq {
			break // the end of the log
		}
		switch be.Uint32(h[4:]) {
		case jbdDescriptor:
			limit := len(h)
			if csum {
				limit -= 4 // jbd2_journal_block_tail
			}
			// Copy the tags out: reading the data blocks reuses h.
			desc := append([]byte(nil), h[:limit]...)
			for off := 12; off+tagBytes <= len(desc); {
				fs := uint64(be.Uint32(desc[off:]))
				var flags uint32
				if tagBytes == 16 {
					flags = be.Uint32(desc[off+4:])
				} else {
					flags = uint32(be.Uint16(desc[off+6:]))
				}
				if is64 {
					fs |= uint64(be.Uint32(desc[off+8:])) << 32
				}
				next = wrap(next + 1)
				if steps++; steps >= maxlen {
					break scan
				}
				phys, err := j.phys(next)
				if err != nil {
					return nil, 0, err
				}
				if fs >= j.s.blocksCount {
					return nil, 0, fmt.Errorf("journaled block %d beyond the %d blocks", fs, j.s.blocksCount)
				}
				pendingW = append(pendingW, write{fs, extReplayed{phys, flags&jbdFlagEscape != 0}, seq})
				off += tagBytes
				if flags&jbdFlagSameUUID == 0 {
					off += 16
				}
				if flags&jbdFlagLastTag != 0 {
					break
				}
			}
		case jbdCommit:
			writes = append(writes, pendingW...)
			for fs, tx := range pendingR {
				if old, ok := revoked[fs]; !ok || int32(tx-old) > 0 {
					revoked[fs] = tx
				}
			}
			pendingW = pendingW[:0]
			clear(pendingR)
			seq++
			txns++
		case jbdRevoke:
			count := int(be.Uint32(h[12:]))
			if count < 16 || count > len(h) {
				return nil, 0, fmt.Errorf("revoke block of %d bytes", count)
			}
			size := 4
			if is64 {
				size = 8
			}
			for off := 16; off+size <= count; off += size {
				fs := uint64(be.Uint32(h[off:]))
				if is64 {
					fs = be.Uint64(h[off:])
				}
				if fs < j.s.blocksCount {
					pendingR[fs] = seq
				}
			}
		default:
			break scan
		}
		next = wrap(next + 1)
	}
	// Replay in log order; a block revoked by the same or a later
	// transaction is not replayed (jbd2_journal_test_revoke).
	blocks := map[uint64]extReplayed{}
	for _, w := range writes {
		if r, ok := revoked[w.fs]; ok && int32(r-w.tx) >= 0 {
			continue
		}
		blocks[w.fs] = w.at
	}
	return blocks, txns, nil
}
