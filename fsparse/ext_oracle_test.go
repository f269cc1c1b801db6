package fsparse

// Oracles for the ext tests: the filesystem's own accounting (dumpe2fs),
// partclone's, and a copy of only the in-use extents checked by e2fsck and
// by comparing files.

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
)

// extMapImage runs InUse on the image or device at path.
func extMapImage(t *testing.T, path string) (Info, []Extent) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size := extDeviceSize(t, f)
	info, es, err := InUse(context.Background(), f, size)
	if err != nil {
		t.Fatalf("InUse(%s): %v", path, err)
	}
	extCheckExtents(t, es, info.TotalBytes)
	return info, es
}

// extDeviceSize is the size of an image file or, by seeking, a block device.
func extDeviceSize(t *testing.T, f *os.File) int64 {
	t.Helper()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// extCheckExtents asserts the extents are sorted, disjoint, non-touching,
// non-empty and inside the filesystem.
func extCheckExtents(t *testing.T, es []Extent, total int64) {
	t.Helper()
	var prev int64 = -1
	for i, e := range es {
		if e.Length <= 0 || e.Offset <= prev || e.End() > total {
			t.Fatalf("extent %d %+v after end %d (filesystem of %d bytes) is not sorted, merged and inside", i, e, prev, total)
		}
		prev = e.End()
	}
}

// extDumpe2fsUsed returns the used bytes by the filesystem's own accounting:
// (block count - free blocks) * block size, from dumpe2fs -h.
func extDumpe2fsUsed(t *testing.T, path string) int64 {
	t.Helper()
	out, err := exec.Command("dumpe2fs", "-h", path).Output()
	if err != nil {
		t.Fatalf("dumpe2fs -h %s: %v", path, err)
	}
	fields := map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
			fields[k] = n
		}
	}
	count, free, bs := fields["Block count"], fields["Free blocks"], fields["Block size"]
	if count == 0 || bs == 0 {
		t.Fatalf("dumpe2fs -h %s: no block count or size in:\n%s", path, out)
	}
	return (count - free) * bs
}

var extPartcloneUsedRE = regexp.MustCompile(`Space in use:.*= *(\d+) Blocks[\s\S]*Block size: *(\d+) Byte`)

// extPartcloneUsed returns the used bytes partclone.extfs counts, from its
// bitmap pass in domain-log mode (-D), which maps without copying data and
// prints the same summary as a clone (-c).
func extPartcloneUsed(t *testing.T, path string) int64 {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("partclone.extfs", "-F", "-f", "0", "-D", "-s", path, "-O", filepath.Join(dir, "domain.log"), "-L", filepath.Join(dir, "partclone.log"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("partclone.extfs -D -s %s: %v\n%s", path, err, out)
	}
	m := extPartcloneUsedRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("partclone.extfs: no 'Space in use' in:\n%s", out)
	}
	blocks, _ := strconv.ParseInt(string(m[1]), 10, 64)
	bs, _ := strconv.ParseInt(string(m[2]), 10, 64)
	return blocks * bs
}

// extCopyExtents writes the in-use extents of src into a new zeroed sparse
// image of the same size and returns its path.
func extCopyExtents(t *testing.T, src string, es []Extent) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	size := extDeviceSize(t, in)
	dst := testenv.NewImage(t, size)
	out, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	buf := make([]byte, 1<<20)
	for _, e := range es {
		for off := e.Offset; off < e.End(); {
			n := min(int64(len(buf)), e.End()-off)
			if _, err := in.ReadAt(buf[:n], off); err != nil {
				t.Fatalf("reading %s at %d: %v", src, off, err)
			}
			if _, err := out.WriteAt(buf[:n], off); err != nil {
				t.Fatal(err)
			}
			off += n
		}
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// extE2fsckClean runs e2fsck -fn, which changes nothing and fails on any
// inconsistency.
func extE2fsckClean(t *testing.T, path string) {
	t.Helper()
	if out, err := exec.Command("e2fsck", "-fn", path).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn on the copy of the in-use extents: %v\n%s", err, out)
	}
}

// extJournalBlocks lists the blocks of the journal inode, by debugfs.
func extJournalBlocks(t *testing.T, path string) []int64 {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "blocks <8>", path).Output()
	if err != nil {
		t.Fatalf("debugfs blocks <8> %s: %v", path, err)
	}
	var bs []int64
	for _, f := range strings.Fields(string(out)) {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			t.Fatalf("debugfs blocks <8>: %q in %q", f, out)
		}
		bs = append(bs, n)
	}
	return bs
}

// extCovered reports whether [off, off+n) lies inside one of the sorted
// extents.
func extCovered(es []Extent, off, n int64) bool {
	lo, hi := 0, len(es)
	for lo < hi {
		m := (lo + hi) / 2
		if es[m].End() <= off {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo < len(es) && es[lo].Offset <= off && off+n <= es[lo].End()
}

// extFreeze freezes the filesystem mounted on mp (FIFREEZE, through
// fsfreeze) until the test ends: the journal is checkpointed, needs_recovery
// cleared and the superblock's counters written, so the device reads as a
// clean filesystem.
func extFreeze(t *testing.T, mp string) {
	t.Helper()
	if out, err := exec.Command("fsfreeze", "--freeze", mp).CombinedOutput(); err != nil {
		t.Fatalf("fsfreeze --freeze %s: %v: %s", mp, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("fsfreeze", "--unfreeze", mp).CombinedOutput(); err != nil {
			t.Errorf("fsfreeze --unfreeze %s: %v: %s", mp, err, out)
		}
	})
}
