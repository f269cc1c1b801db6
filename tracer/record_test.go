package tracer

import (
	"encoding/binary"
	"errors"
	"os"
	"testing"
)

// v7 builds a relay-layout version 7 record.
func v7(seq uint32, sector uint64, bytes uint32, action uint32, pdu []byte) []byte {
	p := make([]byte, recordV7Len, recordV7Len+len(pdu))
	binary.LittleEndian.PutUint32(p, traceMagic|7)
	binary.LittleEndian.PutUint32(p[4:], seq)
	binary.LittleEndian.PutUint64(p[16:], sector)
	binary.LittleEndian.PutUint32(p[24:], bytes)
	binary.LittleEndian.PutUint32(p[28:], action)
	binary.LittleEndian.PutUint32(p[36:], 7<<20|3)
	binary.LittleEndian.PutUint16(p[46:], uint16(len(pdu)))
	return append(p, pdu...)
}

// v8 builds a relay-layout version 8 record.
func v8(seq uint32, sector uint64, bytes uint32, action uint64, pdu []byte) []byte {
	p := make([]byte, recordV8Len, recordV8Len+len(pdu))
	binary.LittleEndian.PutUint32(p, traceMagic|8)
	binary.LittleEndian.PutUint32(p[4:], seq)
	binary.LittleEndian.PutUint64(p[16:], sector)
	binary.LittleEndian.PutUint32(p[24:], bytes)
	binary.LittleEndian.PutUint64(p[32:], action)
	binary.LittleEndian.PutUint32(p[40:], 7<<20|3)
	binary.LittleEndian.PutUint16(p[50:], uint16(len(pdu)))
	return append(p, pdu...)
}

func act(code int, cats uint64) uint64 { return uint64(code) | cats<<tcShift }

const (
	tcQueue    = 1 << 4
	tcComplete = 1 << 7
	tcSync     = 1 << 3
	tcRead     = 1 << 0
	tcFlush    = 1 << 2
)

func TestDecodeRecordVersions(t *testing.T) {
	stream := append(v7(1, 40, 4096, uint32(act(ActQueue, TCWrite|tcQueue)), nil),
		v8(2, 80, 8192, act(ActComplete, TCWrite|TCWriteZeroes|tcComplete), []byte{1, 2, 3, 4, 5, 6, 7, 8})...)
	r, n, err := DecodeRecord(stream)
	if err != nil || n != 48 || r.Version != 7 || r.Sector != 40 || r.Bytes != 4096 || r.Code() != ActQueue || r.Sequence != 1 {
		t.Fatalf("v7: %+v %d %v", r, n, err)
	}
	r, n, err = DecodeRecord(stream[n:])
	if err != nil || n != 72 || r.Version != 8 || r.Sector != 80 || r.Bytes != 8192 || r.Code() != ActComplete || r.Categories()&TCWriteZeroes == 0 || r.Device != 7<<20|3 {
		t.Fatalf("v8: %+v %d %v", r, n, err)
	}
	if _, _, err := DecodeRecord(stream[:47]); !errors.Is(err, ErrShortRecord) {
		t.Fatalf("short v7: %v", err)
	}
	if _, _, err := DecodeRecord(stream[48 : 48+70]); !errors.Is(err, ErrShortRecord) {
		t.Fatalf("v8 without its payload: %v", err)
	}
	bad := v7(1, 0, 0, 0, nil)
	bad[0] = 9
	if _, _, err := DecodeRecord(bad); !errors.Is(err, ErrBadRecord) {
		t.Fatalf("bad version: %v", err)
	}
	bad[3] = 0
	if _, _, err := DecodeRecord(bad); !errors.Is(err, ErrBadRecord) {
		t.Fatalf("bad magic: %v", err)
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name   string
		r      Record
		change Change
		off    int64
		length int64
	}{
		{"queued write", Record{Sector: 8, Bytes: 4096, Action: act(ActQueue, TCWrite|tcQueue|tcSync)}, RangeChanged, 4096, 4096},
		{"completed write with error", Record{Sector: 8, Bytes: 512, Error: 5, Action: act(ActComplete, TCWrite|tcComplete)}, RangeChanged, 4096, 512},
		{"queued discard", Record{Sector: 0, Bytes: 1 << 20, Action: act(ActQueue, TCWrite|TCDiscard|tcQueue)}, RangeChanged, 0, 1 << 20},
		{"v8 write zeroes", Record{Sector: 1, Bytes: 1024, Action: act(ActQueue, TCWrite|TCWriteZeroes|tcQueue)}, RangeChanged, 512, 1024},
		{"v7 write zeroes: only the write category", Record{Version: 7, Sector: 16, Bytes: 8192, Action: act(ActQueue, TCWrite|tcQueue)}, RangeChanged, 8192, 8192},
		{"secure erase", Record{Sector: 2, Bytes: 512, Action: act(ActQueue, TCWrite|TCDiscard|tcQueue)}, RangeChanged, 1024, 512},
		{"preflush write with data", Record{Sector: 8, Bytes: 4096, Action: act(ActQueue, TCWrite|tcFlush|tcQueue)}, RangeChanged, 4096, 4096},
		{"FUA write", Record{Sector: 8, Bytes: 4096, Action: act(ActQueue, TCWrite|1<<15|tcQueue)}, RangeChanged, 4096, 4096},
		{"partial completion", Record{Sector: 24, Bytes: 1024, Action: act(ActComplete, TCWrite|tcComplete)}, RangeChanged, 12288, 1024},
		{"split repeats the queue", Record{Sector: 8, Bytes: 0, Action: act(13, TCWrite)}, NoChange, 0, 0},
		{"partition remap repeats the queue", Record{Sector: 4104, Bytes: 4096, Action: act(15, TCWrite|tcQueue)}, NoChange, 0, 0},
		{"completed read", Record{Sector: 8, Bytes: 4096, Action: act(ActComplete, tcRead|tcComplete)}, NoChange, 0, 0},
		{"issue repeats the queue", Record{Sector: 8, Bytes: 4096, Action: act(7, TCWrite|1<<6)}, NoChange, 0, 0},
		{"back merge repeats the queue", Record{Sector: 8, Bytes: 4096, Action: act(2, TCWrite|tcQueue)}, NoChange, 0, 0},
		{"queued read", Record{Sector: 8, Bytes: 4096, Action: act(ActQueue, tcRead|tcQueue)}, NoChange, 0, 0},
		{"empty preflush write", Record{Sector: 0, Bytes: 0, Action: act(ActQueue, TCWrite|tcFlush|tcQueue)}, NoChange, 0, 0},
		{"notify", Record{Action: act(2, TCNotify|TCWrite)}, NoChange, 0, 0},
		{"passthrough write", Record{Bytes: 512, Action: act(12, TCWrite|TCPC|tcQueue)}, UnknownChange, 0, 0},
		{"zone reset", Record{Sector: 1 << 19, Action: act(ActQueue, TCWrite|TCZoneReset|tcQueue)}, UnknownChange, 0, 0},
		{"zone append", Record{Sector: 1 << 19, Bytes: 4096, Action: act(ActComplete, TCWrite|TCZoneAppend|tcComplete)}, UnknownChange, 0, 0},
		{"absurd sector", Record{Sector: 1 << 62, Bytes: 4096, Action: act(ActQueue, TCWrite|tcQueue)}, UnknownChange, 0, 0},
	} {
		c, off, l := Classify(tc.r)
		if c != tc.change || off != tc.off || l != tc.length {
			t.Errorf("%s: Classify = %v %d %d, want %v %d %d", tc.name, c, off, l, tc.change, tc.off, tc.length)
		}
	}
}

// TestParseKernelPage parses a page this package's machine (Linux 6.18)
// wrote for dd writing 3 blocks at sector 40 of a loop device with O_DIRECT
// (testdata/ftrace-6.18-loop-write.page, from trace_pipe_raw).
func TestParseKernelPage(t *testing.T) {
	page, err := os.ReadFile("testdata/ftrace-6.18-loop-write.page")
	if err != nil {
		t.Fatal(err)
	}
	var queued, completed []uint64
	var lastTS uint64
	info, err := ParsePage(page, func(ts uint64, data []byte) error {
		if ts < lastTS {
			t.Errorf("time went back: %d after %d", ts, lastTS)
		}
		lastTS = ts
		r, err := DecodeFtraceRecord(data)
		if err != nil {
			return err
		}
		if r.Version != 7 {
			t.Errorf("version %d, this kernel writes 7", r.Version)
		}
		switch c, off, l := Classify(r); {
		case c == RangeChanged && r.Code() == ActQueue:
			queued = append(queued, uint64(off/512), uint64(l))
		case c == RangeChanged && r.Code() == ActComplete:
			completed = append(completed, uint64(off/512), uint64(l))
		case c == UnknownChange:
			t.Errorf("unknown change in %+v", r)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []uint64{40, 4096, 48, 4096, 56, 4096}
	if len(queued) != 6 || len(completed) != 6 {
		t.Fatalf("queued %v completed %v, want %v both (page: %+v)", queued, completed, want, info)
	}
	for i := range want {
		if queued[i] != want[i] || completed[i] != want[i] {
			t.Fatalf("queued %v completed %v, want %v", queued, completed, want)
		}
	}
	if info.Missed || info.Events != 18 {
		t.Fatalf("page info %+v, want 18 events and none missed", info)
	}
}

// pageBuilder writes synthetic ring-buffer pages.
type pageBuilder struct{ b []byte }

func newPage(ts uint64) *pageBuilder {
	p := &pageBuilder{b: make([]byte, pageHeaderLen, 4096)}
	binary.LittleEndian.PutUint64(p.b, ts)
	return p
}

func (p *pageBuilder) hdr(typeLen, delta uint32) {
	p.b = binary.LittleEndian.AppendUint32(p.b, typeLen|delta<<5)
}

func (p *pageBuilder) event(delta uint32, data []byte, long bool) {
	for len(data)%4 != 0 {
		data = append(data, 0)
	}
	if long || len(data) > typeLenMax*4 {
		p.hdr(0, delta)
		p.b = binary.LittleEndian.AppendUint32(p.b, uint32(len(data)+4))
	} else {
		p.hdr(uint32(len(data)/4), delta)
	}
	p.b = append(p.b, data...)
}

func (p *pageBuilder) finish(flags uint64, size int) []byte {
	binary.LittleEndian.PutUint64(p.b[8:], uint64(len(p.b)-pageHeaderLen)|flags)
	out := make([]byte, size)
	copy(out, p.b)
	return out
}

// ftraceV8 turns a relay record into the ftrace payload: trace_entry first.
func ftracePayload(rec []byte) []byte {
	p := append([]byte(nil), rec...)
	binary.LittleEndian.PutUint16(p, 14)
	binary.LittleEndian.PutUint32(p[4:], 1234)
	return p
}

func TestParseSyntheticPage(t *testing.T) {
	p := newPage(1000)
	p.event(5, ftracePayload(v8(0, 100, 4096, act(ActQueue, TCWrite|tcQueue), nil)), false)
	p.hdr(typeTimeExtend, 3) // + (2<<27 | 3)
	p.b = binary.LittleEndian.AppendUint32(p.b, 2)
	p.event(1, ftracePayload(v7(0, 200, 512, uint32(act(ActQueue, TCWrite|tcQueue)), []byte{9, 9, 9, 9, 9, 9, 9, 9})), true)
	p.hdr(typePadding, 1) // a discarded event of 12 bytes
	p.b = binary.LittleEndian.AppendUint32(p.b, 12)
	p.b = append(p.b, make([]byte, 8)...)
	p.hdr(typeTimeStamp, 7) // absolute: 1<<27 | 7
	p.b = binary.LittleEndian.AppendUint32(p.b, 1)
	p.event(0, ftracePayload(v8(0, 300, 1024, act(ActComplete, TCWrite|tcComplete), []byte{1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8})), false)
	p.hdr(typePadding, 0)                                                // rest of the page
	page := p.finish(0xffffffff00000000|missedEvents|missedStored, 4096) // sign-extended, as the kernel writes it
	binary.LittleEndian.PutUint64(page[pageHeaderLen+binary.LittleEndian.Uint64(page[8:])&0xffffff:], 77)

	type ev struct {
		ts     uint64
		sector uint64
		ver    int
	}
	var got []ev
	info, err := ParsePage(page, func(ts uint64, data []byte) error {
		r, err := DecodeFtraceRecord(data)
		if err != nil {
			return err
		}
		got = append(got, ev{ts, r.Sector, r.Version})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []ev{{1005, 100, 8}, {1005 + 2<<27 + 3 + 1, 200, 7}, {1<<27 | 7, 300, 8}}
	if len(got) != len(want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("event %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if !info.Missed || info.MissedCount != 77 {
		t.Fatalf("info %+v, want missed 77", info)
	}
}

func TestParsePageRejects(t *testing.T) {
	good := newPage(1)
	good.event(0, ftracePayload(v7(0, 1, 512, uint32(act(ActQueue, TCWrite|tcQueue)), nil)), false)
	page := good.finish(0, 4096)
	for name, mutate := range map[string]func(p []byte){
		"commit beyond page": func(p []byte) { binary.LittleEndian.PutUint64(p[8:], 5000) },
		"event beyond commit": func(p []byte) {
			binary.LittleEndian.PutUint64(p[8:], 20)
		},
		"long length beyond": func(p []byte) {
			binary.LittleEndian.PutUint32(p[16:], 0)
			binary.LittleEndian.PutUint32(p[20:], 4000)
		},
		"time extend cut": func(p []byte) {
			binary.LittleEndian.PutUint64(p[8:], 4)
			binary.LittleEndian.PutUint32(p[16:], typeTimeExtend)
		},
	} {
		bad := append([]byte(nil), page...)
		mutate(bad)
		if _, err := ParsePage(bad, func(uint64, []byte) error { return nil }); !errors.Is(err, ErrBadRecord) {
			t.Errorf("%s: err = %v, want ErrBadRecord", name, err)
		}
	}
	if _, err := ParsePage(page[:10], nil); !errors.Is(err, ErrBadRecord) {
		t.Errorf("short page: %v", err)
	}
	if _, err := DecodeFtraceRecord(make([]byte, 56)); !errors.Is(err, ErrBadRecord) {
		t.Errorf("56-byte payload with pdu_len 0 decoded: %v", err)
	}
}

func TestSeqChecker(t *testing.T) {
	var c SeqChecker
	seqs := []struct {
		cpu, seq, gap uint32
	}{{0, 1, 0}, {1, 1, 0}, {0, 2, 0}, {0, 0, 0}, {0, 3, 0}, {1, 4, 2}, {0, 10, 6}, {2, 5, 4}}
	for _, s := range seqs {
		if g := c.Check(Record{CPU: s.cpu, Sequence: s.seq}); g != s.gap {
			t.Errorf("cpu %d seq %d: gap %d, want %d", s.cpu, s.seq, g, s.gap)
		}
	}
}

func FuzzRecord(f *testing.F) {
	f.Add(v7(1, 2, 3, uint32(act(ActQueue, TCWrite|tcQueue)), nil))
	f.Add(v8(1, 2, 3, act(ActComplete, TCWrite|tcComplete), []byte{1, 2, 3, 4, 5, 6, 7, 8}))
	f.Add(ftracePayload(v8(0, 2, 3, act(ActQueue, TCWrite|TCPC|tcQueue), nil)))
	f.Fuzz(func(t *testing.T, p []byte) {
		if r, n, err := DecodeRecord(p); err == nil {
			if n > len(p) || n < recordV7Len {
				t.Fatalf("length %d of %d bytes", n, len(p))
			}
			Classify(r)
		}
		if r, err := DecodeFtraceRecord(p); err == nil {
			c, off, l := Classify(r)
			if c == RangeChanged && (off < 0 || l <= 0 || off+l < off) {
				t.Fatalf("range %d+%d", off, l)
			}
		}
	})
}

func FuzzRingPage(f *testing.F) {
	if page, err := os.ReadFile("testdata/ftrace-6.18-loop-write.page"); err == nil {
		f.Add(page)
	}
	p := newPage(7)
	p.event(1, ftracePayload(v8(0, 1, 512, act(ActQueue, TCWrite|tcQueue), nil)), true)
	p.hdr(typeTimeExtend, 1)
	p.b = binary.LittleEndian.AppendUint32(p.b, 1)
	f.Add(p.finish(missedEvents, 256))
	f.Fuzz(func(t *testing.T, page []byte) {
		s := NewSet(1<<30, 4096)
		ParsePage(page, func(ts uint64, data []byte) error {
			if len(data) > len(page) {
				t.Fatalf("event of %d bytes in a %d-byte page", len(data), len(page))
			}
			r, err := DecodeFtraceRecord(data)
			if err != nil {
				return nil
			}
			if c, off, l := Classify(r); c == RangeChanged {
				s.Add(off, l)
			}
			return nil
		})
	})
}

func BenchmarkParseKernelPage(b *testing.B) {
	page, err := os.ReadFile("testdata/ftrace-6.18-loop-write.page")
	if err != nil {
		b.Fatal(err)
	}
	s := NewSet(1<<30, 4096)
	b.SetBytes(int64(len(page)))
	for b.Loop() {
		ParsePage(page, func(_ uint64, data []byte) error {
			if r, err := DecodeFtraceRecord(data); err == nil {
				apply(s, r, 0)
			}
			return nil
		})
	}
}
