package tracer

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Trace record layouts, from include/uapi/linux/blktrace_api.h. Both are
// little-endian on the machines we run on (the kernel writes host order;
// we support little-endian hosts only, which go:build in the Linux files
// does not restrict, so the decoders say so).
//
//	struct blk_io_trace (version 7, 48 bytes)
//	  0 magic u32   4 sequence u32   8 time u64   16 sector u64
//	 24 bytes u32  28 action u32    32 pid u32   36 device u32
//	 40 cpu u32    44 error u16     46 pdu_len u16
//	struct blk_io_trace2 (version 8, 64 bytes, kernels since late 2025)
//	  0 magic u32   4 sequence u32   8 time u64   16 sector u64
//	 24 bytes u32  28 pid u32       32 action u64   40 device u32
//	 44 cpu u32    48 error u16     50 pdu_len u16  52 pad [12]
//
// pdu_len bytes follow the record: the cgroup id (8 bytes, when the action
// has the cgroup flag) and then the action's payload.
const (
	traceMagic     = 0x65617400
	recordV7Len    = 48
	recordV8Len    = 64
	sectorSize     = 512
	actionCodeMask = 0xff
)

// Action codes (the low byte of the action) and categories (the bits from
// BLK_TC_SHIFT up; in version 8 they extend above bit 31).
const (
	ActQueue    = 1 // __BLK_TA_QUEUE: a bio entered the block layer
	ActComplete = 8 // __BLK_TA_COMPLETE: the driver completed (part of) a request
	actCgroup   = 1 << 8

	tcShift        = 16
	TCWrite        = 1 << 1  // BLK_TC_WRITE: op_is_write(op): writes, discards, write-zeroes, ...
	TCNotify       = 1 << 10 // BLK_TC_NOTIFY: a message, not I/O
	TCDiscard      = 1 << 13 // BLK_TC_DISCARD: discard and secure erase
	TCPC           = 1 << 9  // BLK_TC_PC: a passthrough request; no sector range
	TCZoneAppend   = 1 << 16 // version 8 categories, above BLK_TC_END_V1
	TCZoneReset    = 1 << 17
	TCZoneResetAll = 1 << 18
	TCZoneFinish   = 1 << 19
	TCWriteZeroes  = 1 << 22
)

// A Record is one decoded blk_io_trace or blk_io_trace2.
type Record struct {
	Version  int    // 7 or 8
	Sequence uint32 // per-CPU event number (classic relay only; 0 for notes and in ftrace)
	Time     uint64 // nanoseconds (classic relay only)
	Sector   uint64 // in 512-byte sectors of the whole disk
	Bytes    uint32
	Action   uint64 // code in the low byte, categories from bit 16; version 7 zero-extended
	PID      uint32
	Device   uint32 // kernel dev_t: major<<20 | minor
	CPU      uint32
	Error    uint16
	PDULen   uint16
}

// Code returns the action code, such as ActQueue or ActComplete.
func (r Record) Code() int { return int(r.Action & actionCodeMask) }

// Categories returns the BLK_TC_* category bits.
func (r Record) Categories() uint64 { return r.Action >> tcShift }

// A Change says what a record means for the changed-block set.
type Change int

const (
	// NoChange: the record does not change data, or is already counted.
	NoChange Change = iota
	// RangeChanged: the bytes [Offset, Offset+Length) of the whole disk
	// may have changed.
	RangeChanged
	// UnknownChange: data changed at a place the record does not give
	// (a passthrough write, a zone reset or append): the set must be
	// marked incomplete.
	UnknownChange
)

// Classify decides whether a record changes data, and where.
//
// Which events count. A write (op_is_write: write, discard, secure erase,
// write-zeroes, zone append...) produces a queue event 'Q' once per bio,
// when the bio enters the block layer (submit_bio_noacct_nocheck), after a
// partition remap and before any split, merge or data transfer; it carries
// the bio's whole range. A completion 'C' is emitted per request, possibly
// several times for partial completions, after the data reached the device,
// and may carry an error (the data may still have partly changed). We count
// both:
//
//   - Q is the guarantee. Every data-changing bio is queued exactly once and
//     its event is in the ring before the I/O even starts, so by the time a
//     write has completed its range is in the ring, which is what the flush
//     barrier relies on. Errors do not matter: a failed write may have
//     changed some blocks, and counting it is the safe side.
//   - C is the safety net for writes in flight across a cut: a write queued
//     before Cut (so counted in the closed epoch) but completing after the
//     pass copied the block would otherwise be acknowledged with the old
//     data. Its completion lands in the later epoch, so it is copied again.
//
// Issue 'D', insert 'I', merges 'M'/'F', split 'X', remap 'A', requeue 'R'
// and plug events repeat ranges already counted by Q and are ignored, as
// are reads, flushes and empty pre-flush writes (no data). Passthrough (PC)
// writes carry no sector, and version 8 zone operations move data without
// saying where: both are UnknownChange.
func Classify(r Record) (c Change, offset, length int64) {
	cat := r.Categories()
	if cat&TCNotify != 0 || cat&TCWrite == 0 {
		return NoChange, 0, 0
	}
	if cat&TCPC != 0 {
		if r.Code() == ActComplete || r.Code() == ActQueue || r.Code() == 12 /* insert */ {
			return UnknownChange, 0, 0
		}
		return NoChange, 0, 0
	}
	code := r.Code()
	if code != ActQueue && code != ActComplete {
		return NoChange, 0, 0
	}
	if cat&(TCZoneAppend|TCZoneReset|TCZoneResetAll|TCZoneFinish) != 0 {
		return UnknownChange, 0, 0
	}
	if r.Bytes == 0 {
		return NoChange, 0, 0
	}
	if r.Sector >= 1<<53 {
		// Beyond any real device (4 EiB). Below it, neither the byte
		// offset nor its end (plus at most 4 GiB) can wrap an int64.
		return UnknownChange, 0, 0
	}
	return RangeChanged, int64(r.Sector) * sectorSize, int64(r.Bytes)
}

// Decoding errors.
var (
	// ErrShortRecord: the buffer ends inside a record; read more.
	ErrShortRecord = errors.New("tracer: short trace record")
	// ErrBadRecord wraps every other decoding failure.
	ErrBadRecord = errors.New("tracer: bad trace record")
)

// DecodeRecord decodes one record of the classic relay stream, which starts
// with the magic: its low byte, the version, selects the layout. It returns
// the record and the bytes it occupies including its payload.
func DecodeRecord(p []byte) (Record, int, error) {
	if len(p) < 4 {
		return Record{}, 0, ErrShortRecord
	}
	magic := binary.LittleEndian.Uint32(p)
	if magic&^0xff != traceMagic {
		return Record{}, 0, fmt.Errorf("%w: magic %#08x", ErrBadRecord, magic)
	}
	var r Record
	var n int
	switch v := magic & 0xff; v {
	case 7:
		if len(p) < recordV7Len {
			return Record{}, 0, ErrShortRecord
		}
		r, n = decodeV7(p), recordV7Len
	case 8:
		if len(p) < recordV8Len {
			return Record{}, 0, ErrShortRecord
		}
		r, n = decodeV8(p), recordV8Len
	default:
		return Record{}, 0, fmt.Errorf("%w: unsupported version %d", ErrBadRecord, v)
	}
	r.Sequence = binary.LittleEndian.Uint32(p[4:])
	r.Time = binary.LittleEndian.Uint64(p[8:])
	n += int(r.PDULen)
	if len(p) < n {
		return Record{}, 0, ErrShortRecord
	}
	return r, n, nil
}

func decodeV7(p []byte) Record {
	return Record{
		Version: 7,
		Sector:  binary.LittleEndian.Uint64(p[16:]),
		Bytes:   binary.LittleEndian.Uint32(p[24:]),
		Action:  uint64(binary.LittleEndian.Uint32(p[28:])),
		PID:     binary.LittleEndian.Uint32(p[32:]),
		Device:  binary.LittleEndian.Uint32(p[36:]),
		CPU:     binary.LittleEndian.Uint32(p[40:]),
		Error:   binary.LittleEndian.Uint16(p[44:]),
		PDULen:  binary.LittleEndian.Uint16(p[46:]),
	}
}

func decodeV8(p []byte) Record {
	return Record{
		Version: 8,
		Sector:  binary.LittleEndian.Uint64(p[16:]),
		Bytes:   binary.LittleEndian.Uint32(p[24:]),
		PID:     binary.LittleEndian.Uint32(p[28:]),
		Action:  binary.LittleEndian.Uint64(p[32:]),
		Device:  binary.LittleEndian.Uint32(p[40:]),
		CPU:     binary.LittleEndian.Uint32(p[44:]),
		Error:   binary.LittleEndian.Uint16(p[48:]),
		PDULen:  binary.LittleEndian.Uint16(p[50:]),
	}
}

// DecodeFtraceRecord decodes the payload of a blk tracer event from the
// ftrace ring buffer. There the first 8 bytes, magic and sequence in the
// relay layout, hold the generic struct trace_entry (type, flags, preempt
// count, pid), and time is not filled in, so the version cannot come from
// the magic. It comes from the size instead: the ring buffer stores the
// payload length rounded up to 4 (or 8) bytes, and the payload is the
// record plus pdu_len bytes, so length minus pdu_len is 48..55 for version
// 7 and 64..71 for version 8. pdu_len sits at offset 46 in version 7 and
// 50 in version 8; both are tried and only a consistent reading is
// accepted.
func DecodeFtraceRecord(p []byte) (Record, error) {
	if len(p) >= recordV8Len {
		pdu := int(binary.LittleEndian.Uint16(p[50:]))
		if extra := len(p) - recordV8Len - pdu; extra >= 0 && extra < 8 {
			return decodeV8(p), nil
		}
	}
	if len(p) >= recordV7Len {
		pdu := int(binary.LittleEndian.Uint16(p[46:]))
		if extra := len(p) - recordV7Len - pdu; extra >= 0 && extra < 8 {
			return decodeV7(p), nil
		}
	}
	return Record{}, fmt.Errorf("%w: ftrace blk event of %d bytes fits neither layout", ErrBadRecord, len(p))
}

// A SeqChecker finds gaps in the per-CPU sequence numbers of classic relay
// records: the kernel numbers each CPU's I/O events 1, 2, 3... (notes carry
// 0), so a jump means events were lost.
type SeqChecker struct {
	last map[uint32]uint32
}

// Check records r and returns how many events are missing before it on its
// CPU (0 when none, or when r carries no sequence).
func (c *SeqChecker) Check(r Record) uint32 {
	if r.Sequence == 0 {
		return 0
	}
	if c.last == nil {
		c.last = make(map[uint32]uint32)
	}
	prev, seen := c.last[r.CPU]
	c.last[r.CPU] = r.Sequence
	if !seen {
		if r.Sequence != 1 {
			return r.Sequence - 1
		}
		return 0
	}
	if r.Sequence != prev+1 {
		return r.Sequence - prev - 1 // wraps to a large count if it went back
	}
	return 0
}
