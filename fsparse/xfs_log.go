package fsparse

// XFS log state: does the internal log end with an unmount record?
//
// The log is a ring of 512-byte basic blocks (BBs). Every BB starts with
// the cycle number of the pass that wrote it (a record header starts with
// the magic 0xFEEDBABE and carries the cycle in its next word), so the head
// is where the cycle number drops. The record just before the head is an
// unmount record on a cleanly unmounted filesystem. A frozen (quiesced)
// filesystem instead "covers" its log: its last record is a dummy
// superblock transaction whose tail LSN is its own, so recovery would
// replay nothing else and every other change is already in place. This follows
// xlog_find_head/xlog_find_tail in xfsprogs, without their torn-write
// repairs: an inconclusive log is reported as dirty, the safe answer. It
// reads O(log n) single BBs plus at most one record's worth of BBs.

import (
	"encoding/binary"
	"errors"
	"io"
)

const (
	xlogHeaderMagic  = 0xFEEDBABE
	xlogUnmountTrans = 0x20 // XLOG_UNMOUNT_TRANS in xlog_op_header.oh_flags
	xlogVersion2     = 2
	xlogCycleSize    = 32 * 1024 // XLOG_HEADER_CYCLE_SIZE
	// xlogMaxRecordBBs bounds the backward search for the last record
	// header: a record is at most 256 KiB of data plus its headers.
	xlogMaxRecordBBs = 2*256*1024/512 + 16
)

var errLogInconclusive = errors.New("no record header before the log head")

// xfsLogState is what the end of the log says about the metadata on disk.
type xfsLogState int

const (
	xfsLogDirty   xfsLogState = iota // changes may sit in the log only
	xfsLogClean                      // ends with an unmount record
	xfsLogCovered                    // quiesced (frozen): only a dummy record is live
)

// xfsLogStateOf reads the internal log's head and classifies it.
func xfsLogStateOf(r io.ReaderAt, size int64, sb *xfsSuper) (xfsLogState, error) {
	agno, agbno := uint32(sb.logstart>>sb.agblklog), uint32(sb.logstart&(1<<sb.agblklog-1))
	start := sb.agOffset(agno, agbno)
	nbb := int64(sb.logblocks) * sb.blockSize / 512
	be := binary.BigEndian
	var bb [512]byte
	read := func(i int64) ([]byte, error) {
		i %= nbb
		if err := readFull(r, bb[:], start+i*512, size, "xfs", "log block"); err != nil {
			return nil, err
		}
		return bb[:], nil
	}
	cycle := func(i int64) (uint32, error) {
		b, err := read(i)
		if err != nil {
			return 0, err
		}
		if be.Uint32(b) == xlogHeaderMagic {
			return be.Uint32(b[4:]), nil
		}
		return be.Uint32(b), nil
	}
	first, err := cycle(0)
	if err != nil {
		return xfsLogDirty, err
	}
	last, err := cycle(nbb - 1)
	if err != nil {
		return xfsLogDirty, err
	}
	// With one cycle throughout, the last pass ended at the log's end.
	head := int64(0)
	if first != last {
		// Blocks before the head carry cycle first, those after it the
		// previous pass's cycle: binary search for the boundary.
		lo, hi := int64(0), nbb-1
		for hi-lo > 1 {
			mid := lo + (hi-lo)/2
			c, err := cycle(mid)
			if err != nil {
				return xfsLogDirty, err
			}
			if c == first {
				lo = mid
			} else {
				hi = mid
			}
		}
		head = hi
	}
	// Find the header of the last record before the head.
	for back := int64(1); back <= min(nbb, xlogMaxRecordBBs); back++ {
		i := (head - back + nbb) % nbb
		b, err := read(i)
		if err != nil {
			return xfsLogDirty, err
		}
		if be.Uint32(b) != xlogHeaderMagic {
			continue
		}
		hlen, ops := int64(be.Uint32(b[12:])), be.Uint32(b[40:])
		hblks := int64(1)
		if be.Uint32(b[8:])&xlogVersion2 != 0 {
			if hsize := int64(be.Uint32(b[320:])); hsize > xlogCycleSize {
				hblks = (hsize + xlogCycleSize - 1) / xlogCycleSize
			}
		}
		end := (i + hblks + (hlen+511)/512) % nbb
		if end != head%nbb {
			return xfsLogDirty, nil
		}
		lsn, tail := be.Uint64(b[16:]), be.Uint64(b[24:])
		if ops == 1 {
			op, err := read(i + hblks)
			if err != nil {
				return xfsLogDirty, err
			}
			if op[9]&xlogUnmountTrans != 0 {
				return xfsLogClean, nil
			}
		}
		if tail == lsn {
			return xfsLogCovered, nil
		}
		return xfsLogDirty, nil
	}
	return xfsLogDirty, errLogInconclusive
}
