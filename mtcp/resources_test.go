package mtcp

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
)

func TestResourceParsers(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"max\n", 0, false}, {"1073741824\n", 1 << 30, true}, {"9223372036854771712\n", 0, false}, {"", 0, false}, {"-1", 0, false},
	} {
		if got, ok := parseMemoryLimit(tc.in); got != tc.want || ok != tc.ok {
			t.Errorf("parseMemoryLimit(%q) = %d, %v", tc.in, got, ok)
		}
	}
	for _, tc := range []struct {
		in   string
		want int
		ok   bool
	}{
		{"max 100000\n", 0, false}, {"200000 100000\n", 2, true}, {"150000 100000", 2, true}, {"50000 100000", 1, true}, {"x 1", 0, false},
	} {
		if got, ok := parseCPUMax(tc.in); got != tc.want || ok != tc.ok {
			t.Errorf("parseCPUMax(%q) = %d, %v", tc.in, got, ok)
		}
	}
	if n, ok := parseCFSQuota("-1\n", "100000\n"); ok {
		t.Errorf("v1 quota -1 read as %d CPUs", n)
	}
	if n, ok := parseCFSQuota("300000\n", "100000\n"); !ok || n != 3 {
		t.Errorf("v1 quota 300000/100000 = %d, %v", n, ok)
	}
	if v, ok := parseMeminfo(strings.NewReader("MemFree: 1 kB\nMemTotal:       24683448 kB\n")); !ok || v != 24683448*1024 {
		t.Errorf("parseMeminfo = %d, %v", v, ok)
	}
	v2, v1 := cgroupPaths(strings.NewReader("4:memory:/a/b\n3:cpu,cpuacct:/c\n0::/user.slice\n"))
	if v2 != "/user.slice" || v1["memory"] != "/a/b" || v1["cpuacct"] != "/c" || v1["cpu"] != "/c" {
		t.Errorf("cgroupPaths = %q, %v", v2, v1)
	}
}

func TestChildCount(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		mem         int64
		cpus, level int
		chunk, want int
	}{
		// The design's example: 2 GiB, level 9 (674 MiB + 3 chunks of 1 MiB+): 2 children.
		{1957 * mib, 64, 9, 1 * mib, 2},
		// Memory-bound at -6 with 24 MiB chunks: (1024-256)/(94+24+2*24+) = 4.
		{1024 * mib, 64, 6, 24 * mib, 4},
		// CPU-bound.
		{64 << 30, 2, 6, 24 * mib, 2},
		// Too little memory still runs one child.
		{300 * mib, 8, 9, 192 * mib, 1},
		// Unknown memory: CPUs decide.
		{-1, 3, 9, 192 * mib, 3},
	} {
		if got := ChildCount(tc.mem, tc.cpus, tc.level, tc.chunk); got != tc.want {
			t.Errorf("ChildCount(%d MiB, %d CPUs, -%d, %d MiB chunks) = %d, want %d", tc.mem/mib, tc.cpus, tc.level, tc.chunk/mib, got, tc.want)
		}
	}
	if r := SystemResources(); r.CPUs < 1 || r.Memory == 0 {
		t.Errorf("SystemResources() = %+v", r)
	}
}

func TestOptions(t *testing.T) {
	o, err := Options{Level: 6}.withDefaults()
	if err != nil || o.ChunkSize != 24<<20 || o.Codec != "go" {
		t.Fatalf("defaults at -6: %+v, %v", o, err)
	}
	if o, _ := (Options{}).withDefaults(); o.ChunkSize != 1<<20 {
		t.Errorf("default chunk at -0 is %d, want 1 MiB", o.ChunkSize)
	}
	for _, bad := range []Options{{Level: 10}, {Level: -1}, {ChunkSize: 1000}, {ChunkSize: MaxChunkSize + 1}, {Codec: "zstd"}, {Children: -1}} {
		if _, err := NewWriter(context.Background(), io.Discard, bad); err == nil {
			t.Errorf("NewWriter(%+v) accepted", bad)
		}
	}
	// An override beyond what fits is used, with a warning.
	var warned string
	w, err := NewWriter(context.Background(), io.Discard, Options{Children: 1000, Logf: func(f string, a ...any) { warned = fmt.Sprintf(f, a...) }})
	if err != nil {
		t.Fatal(err)
	}
	if w.Children() != 1000 || !strings.Contains(warned, "1000 children requested") {
		t.Errorf("override: %d children, warning %q", w.Children(), warned)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// FuzzIndex feeds arbitrary bytes to the Index, Stream Footer and Block
// Header parsers: errors, never panics, and nothing they accept exceeds
// the input.
func FuzzIndex(f *testing.F) {
	f.Add(appendIndex(nil, []indexRecord{{unpadded: 100, uncompressed: 1000}, {unpadded: 5, uncompressed: 0}}))
	f.Add(streamFooter(checkCRC64, 16))
	f.Add(frameBlock(nil, []byte{1, 0, 0, 'a', 0}, []byte("a"), 1<<20))
	f.Fuzz(func(t *testing.T, b []byte) {
		if recs, err := parseIndex(b); err == nil && len(recs)*2 > len(b) {
			t.Fatalf("%d records from %d bytes", len(recs), len(b))
		}
		if _, size, err := parseStreamFooter(b); err == nil && (size < 4 || size > 1<<34) {
			t.Fatalf("index size %d", size)
		}
		if h, err := parseBlockHeader(b); err == nil && (h.size > len(b) || h.size > maxBlockHeader) {
			t.Fatalf("header of %d bytes from %d", h.size, len(b))
		}
	})
}
