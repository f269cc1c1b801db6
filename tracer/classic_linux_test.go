package tracer

import (
	"slices"
	"strings"
	"testing"
)

func TestTraceSetupLayout(t *testing.T) {
	b := encodeTraceSetup(TCWrite, 512<<10, 4)
	if b[32] != TCWrite || b[33] != 0 {
		t.Fatalf("act_mask bytes %v", b[32:34])
	}
	if b[36] != 0 || b[37] != 0 || b[38] != 8 || b[39] != 0 { // 512 KiB little-endian
		t.Fatalf("buf_size bytes %v", b[36:40])
	}
	if b[40] != 4 {
		t.Fatalf("buf_nr bytes %v", b[40:44])
	}
	copy(b[:], "loop7\x00garbage")
	if got := traceSetupName(b); got != "loop7" {
		t.Fatalf("name %q", got)
	}
}

// TestRelayStream feeds a relay stream in awkward pieces: records split
// across reads, both versions, a note, a sequence gap, and a partition
// offset.
func TestRelayStream(t *testing.T) {
	var stream []byte
	stream = append(stream, v7(0, 0, 0, uint32(act(0, TCNotify)), []byte("dd\x00\x00\x00\x00\x00\x00"))...) // process note
	stream = append(stream, v7(1, 2048+8, 4096, uint32(act(ActQueue, TCWrite|tcQueue)), nil)...)
	stream = append(stream, v8(2, 2048+16, 512, act(ActQueue, TCWrite|TCDiscard|tcQueue)|actCgroup, []byte{1, 0, 0, 0, 0, 0, 0, 0})...)
	stream = append(stream, v7(3, 2048+24, 4096, uint32(act(7, TCWrite|1<<6)), nil)...)       // issue: ignored
	stream = append(stream, v7(9, 100, 4096, uint32(act(ActQueue, TCWrite|tcQueue)), nil)...) // gap of 5, outside the partition
	for _, piece := range []int{1, 7, 47, 64, 1000} {
		set := NewSet(1<<20, 4096)
		var seq SeqChecker
		var pending []byte
		for i := 0; i < len(stream); i += piece {
			data := append(pending, stream[i:min(i+piece, len(stream))]...)
			rest, err := parseRelayStream(data, &seq, func(r Record) { apply(set, r, 2048*512) }, set)
			if err != nil {
				t.Fatalf("piece %d: %v", piece, err)
			}
			if len(rest) > recordV8Len+0xffff {
				t.Fatalf("pending grew to %d", len(rest))
			}
			pending = append([]byte(nil), rest...)
		}
		if len(pending) != 0 {
			t.Fatalf("piece %d: %d bytes left over", piece, len(pending))
		}
		want := []Extent{{4096, 8192}}
		if got := set.Pending(1); !slices.Equal(got, want) {
			t.Fatalf("piece %d: %v, want %v", piece, got, want)
		}
		ok, why := set.Complete()
		if ok || !strings.Contains(why, "5 blktrace events missing") {
			t.Fatalf("piece %d: complete=%v %q, want the gap reported", piece, ok, why)
		}
	}
}

func TestRelayStreamRejectsGarbage(t *testing.T) {
	set := NewSet(1<<20, 4096)
	var seq SeqChecker
	if _, err := parseRelayStream(make([]byte, 64), &seq, func(Record) {}, set); err == nil {
		t.Fatal("zeros parsed as records")
	}
}
