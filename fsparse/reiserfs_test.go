package fsparse

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
)

// reiserImage makes a ReiserFS with the real mkreiserfs in a sparse image
// file (no root needed).
func reiserImage(t *testing.T, size int64, args ...string) string {
	t.Helper()
	img := testenv.NewImage(t, size)
	testenv.MkfsImage(t, img, "reiserfs", args...)
	return img
}

// reiserFacts is what debugreiserfs -m says about an image.
type reiserFacts struct {
	blockSize, blocks, free int64
	busy                    []Extent // from the printed bitmaps, in bytes
}

var (
	reiserCountRE = regexp.MustCompile(`Count of blocks on the device: (\d+)`)
	reiserBSRE    = regexp.MustCompile(`Blocksize: (\d+)`)
	reiserFreeRE  = regexp.MustCompile(`Free blocks \(count of blocks - used \[journal, bitmaps, data, reserved\] blocks\): (\d+)`)
	reiserBusyRE  = regexp.MustCompile(`Busy ?\((\d+)-(\d+)\)`)
)

func reiserOracle(t *testing.T, img string) reiserFacts {
	t.Helper()
	xrRequire(t, "debugreiserfs")
	out, err := exec.Command("debugreiserfs", "-m", img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugreiserfs -m: %v: %s", err, out)
	}
	s := string(out)
	num := func(re *regexp.Regexp) int64 {
		m := re.FindStringSubmatch(s)
		if m == nil {
			t.Fatalf("debugreiserfs printed no %s:\n%s", re, s)
		}
		v, _ := strconv.ParseInt(m[1], 10, 64)
		return v
	}
	f := reiserFacts{blockSize: num(reiserBSRE), blocks: num(reiserCountRE), free: num(reiserFreeRE)}
	// "#0: block 17: Busy (0-8211) Free(8212-16383) Busy(16384-32767)":
	// the last bitmap's padding bits are set; clip them.
	for _, m := range reiserBusyRE.FindAllStringSubmatch(s, -1) {
		a, _ := strconv.ParseInt(m[1], 10, 64)
		b, _ := strconv.ParseInt(m[2], 10, 64)
		b = min(b, f.blocks-1)
		if a <= b {
			f.busy = append(f.busy, Extent{a * f.blockSize, (b - a + 1) * f.blockSize})
		}
	}
	f.busy = Merge(f.busy)
	return f
}

// reiserfsckClean runs the read-only check, which must find nothing.
func reiserfsckClean(t *testing.T, img string) {
	t.Helper()
	xrRequire(t, "reiserfsck")
	// --yes answers the confirmation prompt; stdin is empty anyway.
	cmd := exec.Command("reiserfsck", "--check", "--yes", "-q", img)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "No corruptions found") {
		t.Fatalf("reiserfsck --check: %v\n%s", err, out)
	}
}

func TestReiserFSShapes(t *testing.T) {
	dir := testenv.TempDir(t)
	bad := dir + "/badblocks"
	// Bad blocks are marked in use in the bitmap: without a kernel that
	// mounts ReiserFS, they are how an image gets a mottled bitmap.
	var b strings.Builder
	for i := 9000; i < 200000; i += 997 {
		fmt.Fprintf(&b, "%d\n", i)
	}
	if err := os.WriteFile(bad, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		size   int64
		args   []string
		format string
	}{
		{"3.6-64M", 64 << 20, nil, "3.6"},
		{"3.5-64M", 64 << 20, []string{"--format", "3.5"}, "3.5"},
		{"3.6-1G-8-bitmaps", 1 << 30, []string{"-l", "backup", "-u", "0b1c2d3e-4f50-4617-8283-94a5b6c7d8e9"}, "3.6"},
		{"3.6-1K-blocks", 64 << 20, []string{"-b", "1024"}, "3.6"},
		{"3.5-1K-blocks-small-journal", 48 << 20, []string{"--format", "3.5", "-b", "1024", "-s", "1000"}, "3.5"},
		{"3.6-badblocks", 1 << 30, []string{"-B", bad}, "3.6"},
		// The last bitmap covers fewer blocks than it has bits.
		{"3.6-odd-size", 200<<20 + 12<<10, nil, "3.6"},
		{"3.6-2K-blocks", 64 << 20, []string{"-b", "2048"}, "3.6"},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := reiserImage(t, c.size, c.args...)
			info, used, err := xrInUseFile(t, img)
			if err != nil {
				t.Fatal(err)
			}
			f := reiserOracle(t, img)
			if info.Filesystem != "reiserfs" || info.BlockSize != f.blockSize || info.TotalBytes != f.blocks*f.blockSize {
				t.Fatalf("info %+v, debugreiserfs %+v", info, f)
			}
			if !slices.Equal(used, f.busy) {
				t.Fatalf("in-use extents differ from debugreiserfs -m:\n ours %v\n tool %v", xrHead(used), xrHead(f.busy))
			}
			if want := (f.blocks - f.free) * f.blockSize; info.UsedBytes != want {
				t.Fatalf("used %d bytes, debugreiserfs (count - free) %d", info.UsedBytes, want)
			}
			if !slices.ContainsFunc(info.Notes, func(n string) bool { return strings.HasPrefix(n, "format "+c.format) }) {
				t.Fatalf("notes %q do not name format %s", info.Notes, c.format)
			}
			if c.name == "3.6-1G-8-bitmaps" && (info.Label != "backup" || info.UUID != "0b1c2d3e-4f50-4617-8283-94a5b6c7d8e9") {
				t.Fatalf("label %q uuid %q", info.Label, info.UUID)
			}
			d, err := xrDetectFile(t, img)
			if err != nil || d.UsedBytes != info.UsedBytes {
				t.Fatalf("Detect %+v %v", d, err)
			}
			t.Logf("%s: %d of %d blocks in use, as debugreiserfs says; %d extents", c.name, info.UsedBytes/f.blockSize, f.blocks, len(used))
			reiserfsckClean(t, xrCopyExtents(t, img, used))
		})
	}
}

// TestReiserFSExternalJournal: the journal in another file is named in
// the notes and not mapped.
func TestReiserFSExternalJournal(t *testing.T) {
	dir := testenv.TempDir(t)
	img, jimg := dir+"/data.img", dir+"/journal.img"
	for _, p := range []string{img, jimg} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, 64<<20); err != nil {
			t.Fatal(err)
		}
	}
	testenv.MkfsImage(t, img, "reiserfs", "-j", jimg)
	info, used, err := xrInUseFile(t, img)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(info.Notes, " "), "external journal") {
		t.Fatalf("notes %q", info.Notes)
	}
	if f := reiserOracle(t, img); !slices.Equal(used, f.busy) {
		t.Fatalf("in-use extents differ from debugreiserfs -m:\n ours %v\n tool %v", xrHead(used), xrHead(f.busy))
	}
}

// TestReiserFSJournalPending writes a committed transaction past the last
// flushed one into a fresh image's journal, as a crash would leave it:
// InUse must refuse, Detect must say so.
func TestReiserFSJournalPending(t *testing.T) {
	img := reiserImage(t, 64<<20)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	sb, err := readReiserSuper(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	bs := sb.blockSize
	le := binary.LittleEndian
	hdr := make([]byte, bs)
	if _, err := f.ReadAt(hdr, int64(sb.journalStart+sb.journalSize)*bs); err != nil {
		t.Fatal(err)
	}
	last, first, mount := le.Uint32(hdr), le.Uint32(hdr[4:]), le.Uint32(hdr[8:])
	desc, commit := make([]byte, bs), make([]byte, bs)
	le.PutUint32(desc, last+1)
	le.PutUint32(desc[4:], 1)
	le.PutUint32(desc[8:], mount)
	le.PutUint32(desc[12:], 9000) // the block the transaction rewrites
	copy(desc[bs-12:], reiserDescMagic)
	le.PutUint32(commit, last+1)
	le.PutUint32(commit[4:], 1)
	at := func(k uint32) int64 { return int64(sb.journalStart+(first+k)%sb.journalSize) * bs }
	if _, err := f.WriteAt(desc, at(0)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(commit, at(2)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := xrInUseFile(t, img); !errors.Is(err, ErrNeedsRecovery) {
		t.Fatalf("InUse with a pending transaction: %v", err)
	}
	info, err := xrDetectFile(t, img)
	if err != nil || !strings.Contains(strings.Join(info.Notes, " "), "not yet replayed") {
		t.Fatalf("Detect: %v, notes %q", err, info.Notes)
	}
	// Without the commit block the transaction never happened.
	if _, err := f.WriteAt(make([]byte, bs), at(2)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := xrInUseFile(t, img); err != nil {
		t.Fatalf("InUse with an uncommitted transaction: %v", err)
	}
}

func TestReiserBitRuns(t *testing.T) {
	bm := make([]byte, 32)
	set := func(k int) { bm[k/8] |= 1 << (k % 8) }
	for k := 0; k < 64; k++ { // a full word
		set(k)
	}
	set(70)
	set(71)
	set(127)
	set(128)
	set(200)
	got := reiserBitRuns(nil, bm, 1000, 201, 2)
	want := []Extent{{2000, 128}, {2140, 4}, {2254, 4}, {2400, 2}}
	if !slices.Equal(Merge(got), want) {
		t.Fatalf("runs %v, want %v", got, want)
	}
	// Bits past n are ignored.
	if got := reiserBitRuns(nil, bm, 0, 200, 1); got[len(got)-1].End() > 200 {
		t.Fatalf("runs past n: %v", got)
	}
}

// TestReiserFSManyBitmaps grows the 1 KiB-block testdata image, in a
// virtual device, past 65535 bitmaps: s_bmap_nr (16 bits) then records 0
// and the count is computed. (mkreiserfs -b 512 on a 130 GiB sparse file
// makes such a filesystem too, and the map agreed with debugreiserfs, but
// it writes 260 MiB and took up to 90 s on a loaded machine.) The added
// bitmaps read as zeros, so the map is the original's plus the new bitmap
// blocks themselves.
func TestReiserFSManyBitmaps(t *testing.T) {
	img := xrImage(t, "reiserfs-3.6-1k.img.gz")
	orig := xrMem(img)
	info0, used0, err := InUse(context.Background(), orig, int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	const bitmaps = 1<<16 + 1
	count := uint32(bitmaps-1)*8192 + 100
	le := binary.LittleEndian
	le.PutUint32(img[reiserSBOffset:], count)
	le.PutUint16(img[reiserSBOffset+70:], 0)
	size := int64(count) * 1024
	dev := xrSparse{img, size}
	info, used, err := InUse(context.Background(), dev, size)
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(used0)
	for i := uint32(1); i < bitmaps; i++ {
		want = append(want, Extent{int64(i) * 8192 * 1024, 1024})
	}
	if want = Merge(want); !slices.Equal(used, want) {
		t.Fatalf("map of %d extents, want %d", len(used), len(want))
	}
	if info.UsedBytes != info0.UsedBytes+(bitmaps-1)*1024 {
		t.Fatalf("used %d, want %d", info.UsedBytes, info0.UsedBytes+(bitmaps-1)*1024)
	}
	// The same count recorded in 16 bits is a contradiction.
	le.PutUint16(img[reiserSBOffset+70:], 1)
	if _, _, err := InUse(context.Background(), dev, size); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("bmap_nr 1 for %d bitmaps: %v", bitmaps, err)
	}
}
