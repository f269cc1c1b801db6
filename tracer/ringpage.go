package tracer

import (
	"encoding/binary"
	"fmt"
)

// Ftrace ring-buffer pages, as trace_pipe_raw returns them (see
// kernel/trace/ring_buffer.c and events/header_page, events/header_event):
//
//	struct buffer_data_page {
//	    u64     time_stamp;  // time of the first event
//	    local_t commit;      // bytes of data; bit 31: events were lost
//	                         // before this page, bit 30: their count is
//	                         // stored as a long just after the data
//	    u8      data[];      // events
//	}
//
// Each event starts with a 32-bit header: type_len in the low 5 bits and
// time_delta in the high 27. type_len 1..28 means a data event of
// type_len*4 bytes following the header; 0 means the length (which counts
// itself) is in the next 32-bit word and the data follows it; 29 is
// padding (time_delta 0: the rest of the page is empty; otherwise a
// discarded event whose length is in the next word); 30 extends the time
// (next word << 27 | time_delta is added); 31 is an absolute time stamp.
const (
	pageHeaderLen   = 16
	missedEvents    = 1 << 31
	missedStored    = 1 << 30
	typePadding     = 29
	typeTimeExtend  = 30
	typeTimeStamp   = 31
	typeLenMax      = 28
	tsShift         = 27
	absTSBits       = 59 // an absolute time stamp keeps the low 59 bits
	eventHeaderSize = 4
)

// PageInfo describes one ring-buffer page.
type PageInfo struct {
	TimeStamp uint64
	DataLen   int
	// Missed is true when the kernel lost events (overwritten or dropped)
	// between the previous page read and this one.
	Missed bool
	// MissedCount is how many, when the kernel could store it (else 0).
	MissedCount uint64
	Events      int
}

// ParsePage walks the events of one ring-buffer page and calls fn with each
// data event's time stamp and payload. The payload aliases page. An error
// from fn stops the walk and is returned. Any inconsistency (a length past
// the committed data, an impossible header) is an error wrapping
// ErrBadRecord: the page cannot be trusted and nor can the trace.
func ParsePage(page []byte, fn func(ts uint64, data []byte) error) (PageInfo, error) {
	var info PageInfo
	if len(page) < pageHeaderLen {
		return info, fmt.Errorf("%w: ring page of %d bytes", ErrBadRecord, len(page))
	}
	info.TimeStamp = binary.LittleEndian.Uint64(page)
	// The kernel adds the flags to the 64-bit local_t as C ints, so
	// RB_MISSED_EVENTS (1 << 31) arrives sign-extended: only the low 32
	// bits are meaningful (a page is far smaller than 1 GiB).
	commit := binary.LittleEndian.Uint64(page[8:])
	low := uint32(commit)
	info.Missed = low&missedEvents != 0
	stored := low&missedStored != 0
	length := uint64(low &^ (missedEvents | missedStored))
	if length > uint64(len(page)-pageHeaderLen) {
		return info, fmt.Errorf("%w: ring page commit %#x beyond its %d bytes", ErrBadRecord, commit, len(page))
	}
	info.DataLen = int(length)
	end := pageHeaderLen + int(length)
	if stored {
		if end+8 <= len(page) {
			info.MissedCount = binary.LittleEndian.Uint64(page[end:])
		}
		info.Missed = true
	}
	ts := info.TimeStamp
	for off := pageHeaderLen; off < end; {
		if end-off < eventHeaderSize {
			return info, fmt.Errorf("%w: event header at %d cut by the end of data %d", ErrBadRecord, off, end)
		}
		h := binary.LittleEndian.Uint32(page[off:])
		typeLen := h & 0x1f
		delta := uint64(h >> 5)
		// word returns the 32-bit word after the header.
		word := func() (uint32, error) {
			if end-off < 8 {
				return 0, fmt.Errorf("%w: event of type %d at %d cut by the end of data %d", ErrBadRecord, typeLen, off, end)
			}
			return binary.LittleEndian.Uint32(page[off+4:]), nil
		}
		switch {
		case typeLen == typePadding:
			if delta == 0 {
				return info, nil // the rest of the page is padding
			}
			l, err := word()
			if err != nil {
				return info, err
			}
			if l < 4 || uint64(l) > uint64(end-off-eventHeaderSize) {
				return info, fmt.Errorf("%w: padding of %d bytes at %d", ErrBadRecord, l, off)
			}
			off += eventHeaderSize + int(l)
		case typeLen == typeTimeExtend:
			w, err := word()
			if err != nil {
				return info, err
			}
			ts += uint64(w)<<tsShift | delta
			off += 8
		case typeLen == typeTimeStamp:
			w, err := word()
			if err != nil {
				return info, err
			}
			abs := uint64(w)<<tsShift | delta
			ts = abs | ts&^(1<<absTSBits-1)
			off += 8
		case typeLen == 0:
			l, err := word()
			if err != nil {
				return info, err
			}
			// l counts its own word and the data.
			if l < 4 || uint64(l) > uint64(end-off-eventHeaderSize) {
				return info, fmt.Errorf("%w: event length %d at %d", ErrBadRecord, l, off)
			}
			ts += delta
			info.Events++
			if err := fn(ts, page[off+8:off+eventHeaderSize+int(l)]); err != nil {
				return info, err
			}
			off += eventHeaderSize + int(l)
		default: // 1..28
			l := int(typeLen) * 4
			if l > end-off-eventHeaderSize {
				return info, fmt.Errorf("%w: event of %d bytes at %d beyond the end of data %d", ErrBadRecord, l, off, end)
			}
			ts += delta
			info.Events++
			if err := fn(ts, page[off+eventHeaderSize:off+eventHeaderSize+l]); err != nil {
				return info, err
			}
			off += eventHeaderSize + l
		}
	}
	return info, nil
}
