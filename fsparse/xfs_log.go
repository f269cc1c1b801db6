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
		if err := xrReadFull(r, bb[:], start+i*512, size, "xfs", "log block"); err != nil {
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
		if ops == 1 {
			op, err := read(i + hblks)
			if err != nil {
				return xfsLogDirty, err
			}
			if op[9]&xlogUnmountTrans != 0 {
				return xfsLogClean, nil
			}
		}
		// The records from the tail to the head are what recovery
		// would replay. If they only log the superblock, the log was
		// covered by a freeze or an idle period: every allocation
		// change is in place.
		tail := int64(be.Uint64(b[24:]) & 0xffffffff)
		if tail >= nbb {
			return xfsLogDirty, nil
		}
		onlySB, err := xlogOnlySuperblock(r, size, start, nbb, tail, head%nbb)
		if err != nil || !onlySB {
			return xfsLogDirty, err
		}
		return xfsLogCovered, nil
	}
	return xfsLogDirty, errLogInconclusive
}

const (
	xlogMaxLiveBBs     = 64          // a covered log's live part is a few BBs
	xlogTransMagic     = 0x5452414e  // "TRAN": xfs_trans_header
	xlogLIBuf          = 0x123c      // XFS_LI_BUF
	xlogContinueFlags  = 0x04 | 0x08 // XLOG_CONTINUE_TRANS | XLOG_WAS_CONT_TRANS
	xlogOpHeaderSize   = 12
	xlogCycleDataSlots = 64 // h_cycle_data entries in one record header
)

// xlogOnlySuperblock reports whether every log item in the records from
// BB tail up to BB head is a buffer item for sector 0, the superblock.
// Record and operation headers are big-endian; the items themselves are in
// the byte order of the host that wrote them, so both are accepted.
// Anything it does not understand (a long live region, a transaction split
// over records, another item type) makes it answer false.
func xlogOnlySuperblock(r io.ReaderAt, size, start, nbb, tail, head int64) (bool, error) {
	be, le := binary.BigEndian, binary.LittleEndian
	live := (head - tail + nbb) % nbb
	if live == 0 || live > xlogMaxLiveBBs {
		return false, nil
	}
	buf := make([]byte, live*512)
	for k := int64(0); k < live; k++ {
		off := start + ((tail+k)%nbb)*512
		if err := xrReadFull(r, buf[k*512:(k+1)*512], off, size, "xfs", "log block"); err != nil {
			return false, err
		}
	}
	for pos := int64(0); pos < live; {
		h := buf[pos*512 : (pos+1)*512]
		if be.Uint32(h) != xlogHeaderMagic {
			return false, nil
		}
		hlen, nops := int64(be.Uint32(h[12:])), int64(be.Uint32(h[40:]))
		if be.Uint32(h[8:])&xlogVersion2 != 0 && be.Uint32(h[320:]) > xlogCycleSize {
			return false, nil // extended headers: not a covering record
		}
		dbbs := (hlen + 511) / 512
		if dbbs > xlogCycleDataSlots || pos+1+dbbs > live {
			return false, nil
		}
		data := buf[(pos+1)*512 : (pos+1+dbbs)*512]
		// Each data BB's first word was replaced by the cycle number;
		// the header keeps the original.
		for j := int64(0); j < dbbs; j++ {
			copy(data[j*512:], h[44+4*j:48+4*j])
		}
		data = data[:hlen]
		regionsLeft := 0
		for op := int64(0); op < nops; op++ {
			if len(data) < xlogOpHeaderSize {
				return false, nil
			}
			n, flags := int(be.Uint32(data[4:])), data[9]
			data = data[xlogOpHeaderSize:]
			if flags&xlogContinueFlags != 0 || n > len(data) {
				return false, nil
			}
			region := data[:n]
			data = data[n:]
			switch {
			case n == 0: // start or commit marker
			case regionsLeft > 0:
				regionsLeft--
			case n >= 4 && (le.Uint32(region) == xlogTransMagic || be.Uint32(region) == xlogTransMagic):
			case n >= 16 && le.Uint16(region) == xlogLIBuf && le.Uint64(region[8:]) == 0:
				regionsLeft = int(le.Uint16(region[2:])) - 1
			case n >= 16 && be.Uint16(region) == xlogLIBuf && be.Uint64(region[8:]) == 0:
				regionsLeft = int(be.Uint16(region[2:])) - 1
			default:
				return false, nil
			}
		}
		pos += 1 + dbbs
	}
	return true, nil
}
