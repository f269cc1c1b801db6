package fsparse

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
)

// xfsImage makes an XFS filesystem with the real mkfs.xfs in a sparse
// image file of size bytes (no root needed).
func xfsImage(t *testing.T, size int64, args ...string) string {
	t.Helper()
	img := testenv.NewImage(t, size)
	testenv.MkfsImage(t, img, "xfs", args...)
	return img
}

// xrInUseFile runs InUse on an image file.
func xrInUseFile(t *testing.T, img string) (Info, []Extent, error) {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return InUse(context.Background(), f, st.Size())
}

// xrDetectFile runs Detect on an image file.
func xrDetectFile(t *testing.T, img string) (Info, error) {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return Detect(f, st.Size())
}

// xrComplement returns the gaps between sorted, merged extents within
// [0, total).
func xrComplement(used []Extent, total int64) []Extent {
	var out []Extent
	next := int64(0)
	for _, e := range used {
		if e.Offset > next {
			out = append(out, Extent{next, e.Offset - next})
		}
		next = e.End()
	}
	if next < total {
		out = append(out, Extent{next, total - next})
	}
	return out
}

// xfsFacts is what xfs_db, reading the same image independently, says.
type xfsFacts struct {
	blockSize, dblocks, fdblocks int64
	flcount, btreeblks, freeblks int64 // summed over the AGs
	maxBnoLevel                  int64
	// free lists the free extents of the bnobt in bytes, merged; the
	// AGFL blocks, which xfs_db's freesp also lists, are left out.
	free []Extent
	// agfl lists the blocks on the AG free lists, in bytes.
	agfl []Extent
}

var xfsDBField = regexp.MustCompile(`(?m)^(\w+)(?:\[[^\]]*\])? = (.*)$`)

// xfsDB runs xfs_db read-only with the given commands.
func xfsDB(t *testing.T, img string, cmds ...string) string {
	t.Helper()
	args := []string{"-r"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command("xfs_db", append(args, img)...).CombinedOutput()
	if err != nil {
		t.Fatalf("xfs_db %v: %v: %s", args, err, out)
	}
	return string(out)
}

func xfsDBFields(out string) map[string][]string {
	m := map[string][]string{}
	for _, f := range xfsDBField.FindAllStringSubmatch(out, -1) {
		m[f[1]] = append(m[f[1]], f[2])
	}
	return m
}

func xfsDBInt(t *testing.T, m map[string][]string, k string, i int) int64 {
	t.Helper()
	if len(m[k]) <= i {
		t.Fatalf("xfs_db printed no %s #%d", k, i)
	}
	v, err := strconv.ParseInt(m[k][i], 0, 64)
	if err != nil {
		t.Fatalf("xfs_db %s: %v", k, err)
	}
	return v
}

// xfsOracle asks xfs_db for the superblock counters, every AGF and AGFL,
// and every free extent.
func xfsOracle(t *testing.T, img string) xfsFacts {
	t.Helper()
	xrRequire(t, "xfs_db")
	sbf := xfsDBFields(xfsDB(t, img, "sb 0", "p blocksize dblocks fdblocks agcount agblocks"))
	f := xfsFacts{
		blockSize: xfsDBInt(t, sbf, "blocksize", 0),
		dblocks:   xfsDBInt(t, sbf, "dblocks", 0),
		fdblocks:  xfsDBInt(t, sbf, "fdblocks", 0),
	}
	agcount, agblocks := xfsDBInt(t, sbf, "agcount", 0), xfsDBInt(t, sbf, "agblocks", 0)
	var cmds []string
	for ag := int64(0); ag < agcount; ag++ {
		cmds = append(cmds, fmt.Sprintf("agf %d", ag), "p flcount btreeblks freeblks flfirst fllast bnolevel",
			fmt.Sprintf("agfl %d", ag), "p bno")
	}
	agf := xfsDBFields(xfsDB(t, img, cmds...))
	agfl := map[[2]int64]bool{} // AGFL blocks as (agno, agbno)
	entry := regexp.MustCompile(`(\d+):(\d+|null)`)
	for ag := int64(0); ag < agcount; ag++ {
		i := int(ag)
		fl := xfsDBInt(t, agf, "flcount", i)
		f.flcount += fl
		f.btreeblks += xfsDBInt(t, agf, "btreeblks", i)
		f.freeblks += xfsDBInt(t, agf, "freeblks", i)
		f.maxBnoLevel = max(f.maxBnoLevel, xfsDBInt(t, agf, "bnolevel", i))
		first := xfsDBInt(t, agf, "flfirst", i)
		// The bno line is "bno[0-N] = 0:x 1:y ...": a ring from flfirst
		// holding flcount entries.
		var bnos []string
		line := agf["bno"][i]
		for _, m := range entry.FindAllStringSubmatch(line, -1) {
			bnos = append(bnos, m[2])
		}
		for k := int64(0); k < fl; k++ {
			v := bnos[(first+k)%int64(len(bnos))]
			b, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("AGFL of AG %d: entry %q", ag, v)
			}
			agfl[[2]int64{ag, b}] = true
			f.agfl = append(f.agfl, Extent{(ag*agblocks + b) * f.blockSize, f.blockSize})
		}
	}
	// freesp -d prints "agno agbno len" for each bnobt record and each
	// AGFL block.
	out := xfsDB(t, img, "freesp -d")
	var aglfSeen int64
	for _, line := range strings.Split(out, "\n") {
		fs := strings.Fields(line)
		if len(fs) != 3 {
			continue
		}
		ag, err1 := strconv.ParseInt(fs[0], 10, 64)
		bno, err2 := strconv.ParseInt(fs[1], 10, 64)
		n, err3 := strconv.ParseInt(fs[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		if n == 1 && agfl[[2]int64{ag, bno}] {
			aglfSeen++
			continue
		}
		f.free = append(f.free, Extent{(ag*agblocks + bno) * f.blockSize, n * f.blockSize})
	}
	if aglfSeen != f.flcount {
		t.Fatalf("xfs_db freesp listed %d of the %d AGFL blocks", aglfSeen, f.flcount)
	}
	f.free = Merge(f.free)
	return f
}

// xrRequire skips or fails (CI) when commands are missing.
func xrRequire(t *testing.T, cmds ...string) {
	t.Helper()
	testenv.Require(t, testenv.Commands(cmds...))
}

// xrPartclone runs partclone's mapping mode (-D: a ddrescue domain log of
// the blocks it would copy, without copying) and returns the count it
// reports in use and the extents marked finished ("+") in the log.
func xrPartclone(t *testing.T, tool, img string) (int64, []Extent) {
	t.Helper()
	xrRequire(t, tool)
	domain := filepath.Join(testenv.TempDir(t), "domain.log")
	out, err := exec.Command(tool, "-D", "-s", img, "-O", domain, "-L", os.DevNull).CombinedOutput()
	if err != nil {
		t.Fatalf("%s -D -s %s: %v: %s", tool, img, err, out)
	}
	m := regexp.MustCompile(`Space in use:.*= (\d+) Blocks`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("%s printed no block count: %s", tool, out)
	}
	n, _ := strconv.ParseInt(string(m[1]), 10, 64)
	log, err := os.ReadFile(domain)
	if err != nil {
		t.Fatal(err)
	}
	var es []Extent
	for _, l := range regexp.MustCompile(`(?m)^0x([0-9A-Fa-f]+)\s+0x([0-9A-Fa-f]+)\s+\+`).FindAllStringSubmatch(string(log), -1) {
		off, _ := strconv.ParseInt(l[1], 16, 64)
		size, _ := strconv.ParseInt(l[2], 16, 64)
		es = append(es, Extent{off, size})
	}
	return n, Merge(es)
}

// checkXFSAgainstTools maps img and checks the map against xfs_db's free
// extents and counters, and against partclone's count. It returns the
// in-use extents.
//
// The accounting: XFS's sb_fdblocks counts as free the bnobt's free blocks
// (agf_freeblks) plus the AGFL blocks (agf_flcount) plus the blocks of the
// free-space B+trees beyond their roots (agf_btreeblks), since all of those
// return to the free pool when the trees shrink. None of them may be
// skipped by a backup: the AGFL and B+tree blocks hold metadata. So
//
//	used = dblocks - sum(agf_freeblks)
//	     = dblocks - fdblocks + sum(agf_flcount + agf_btreeblks)
//
// and the internal log, counted in neither fdblocks nor the bnobt, is in
// use in both. partclone.xfs reports dblocks - fdblocks as its "Space in
// use", but the blocks it copies (its domain log) are ours less exactly
// the AGFL blocks: it copies the B+tree blocks and skips the free list,
// whose blocks a restored filesystem then holds as garbage (harmless to
// XFS, which overwrites a free-list block before using it, but not a copy
// of the source).
//
// With lazy superblock counters (every v5 filesystem), fdblocks on disk is
// exact only after a clean unmount; for an image taken from a frozen
// filesystem, sbExact is false and the used count is checked against the
// AGFs' agf_freeblks instead, and partclone's count (from fdblocks) is only
// reported.
func checkXFSAgainstTools(t *testing.T, img string, sbExact bool) []Extent {
	t.Helper()
	info, used, err := xrInUseFile(t, img)
	if err != nil {
		t.Fatalf("InUse: %v", err)
	}
	f := xfsOracle(t, img)
	total := f.dblocks * f.blockSize
	if info.TotalBytes != total || info.BlockSize != f.blockSize {
		t.Fatalf("InUse: %d bytes in %d-byte blocks, xfs_db: %d in %d", info.TotalBytes, info.BlockSize, total, f.blockSize)
	}
	if len(used) > 0 && used[len(used)-1].End() > total {
		t.Fatalf("map ends at %d, past the data section's %d bytes", used[len(used)-1].End(), total)
	}
	if free := xrComplement(used, total); !slices.Equal(free, f.free) {
		t.Fatalf("free extents differ from xfs_db freesp (less the AGFL):\n ours   %v\n xfs_db %v", xrHead(free), xrHead(f.free))
	}
	var sum int64
	for _, e := range used {
		sum += e.Length
	}
	want := (f.dblocks - f.fdblocks + f.flcount + f.btreeblks) * f.blockSize
	if !sbExact {
		want = (f.dblocks - f.freeblks) * f.blockSize
	}
	if info.UsedBytes != sum || sum != want || info.UsedBytes+info.FreeBytes != total {
		t.Fatalf("used bytes: info %d, extents %d, xfs_db %d (sbExact %v)", info.UsedBytes, sum, want, sbExact)
	}
	d, err := xrDetectFile(t, img)
	if err != nil || d.UsedBytes != info.UsedBytes || d.UUID != info.UUID || d.Label != info.Label {
		t.Fatalf("Detect = %+v, %v; InUse = %+v", d, err, info)
	}
	pc, pcMap := xrPartclone(t, "partclone.xfs", img)
	if sbExact && pc != f.dblocks-f.fdblocks {
		t.Fatalf("partclone.xfs: %d blocks in use, dblocks-fdblocks = %d", pc, f.dblocks-f.fdblocks)
	}
	// partclone's map plus the AGFL is ours, and no AGFL block is in it.
	if !slices.Equal(Merge(append(slices.Clone(pcMap), f.agfl...)), used) {
		t.Fatalf("partclone's map plus the AGFL differs from ours:\n partclone %v\n ours      %v", xrHead(pcMap), xrHead(used))
	}
	for _, a := range f.agfl {
		for _, e := range pcMap {
			if a.Offset < e.End() && e.Offset < a.End() {
				t.Fatalf("partclone copies AGFL block at byte %d", a.Offset)
			}
		}
	}
	var pcCopied int64
	for _, e := range pcMap {
		pcCopied += e.Length
	}
	t.Logf("sbExact %v: used %d blocks = xfs_db dblocks-fdblocks %d + AGFL %d + free-space btree %d; partclone.xfs reports %d, copies %d (= ours - AGFL) (bnobt levels <= %d, %d free extents)",
		sbExact, sum/f.blockSize, f.dblocks-f.fdblocks, f.flcount, f.btreeblks, pc, pcCopied/f.blockSize, f.maxBnoLevel, len(f.free))
	return used
}

func xrHead(es []Extent) []Extent {
	if len(es) > 8 {
		return es[:8]
	}
	return es
}

// TestXFSFreshShapes maps freshly made filesystems of many shapes, with no
// root needed, against xfs_db and partclone.
func TestXFSFreshShapes(t *testing.T) {
	for _, c := range []struct {
		name string
		size int64
		args []string
	}{
		{"v5-300M", 300 << 20, nil},
		{"v4-300M", 300 << 20, []string{"-m", "crc=0"}},
		{"v5-ag1-64M", 64 << 20, []string{"-d", "agcount=1"}},
		{"v5-ag16-2G", 2 << 30, []string{"-d", "agcount=16"}},
		{"v5-1K-blocks", 96 << 20, []string{"-b", "size=1024", "-d", "agcount=3"}},
		{"v4-2K-blocks", 96 << 20, []string{"-m", "crc=0", "-b", "size=2048"}},
		{"v5-4K-sectors", 96 << 20, []string{"-s", "size=4096"}},
		// The filesystem ends before the device does, and its last AG is
		// short: nothing may be mapped past dblocks.
		{"v5-short-last-AG", 400 << 20, []string{"-d", "size=350m,agsize=80m"}}, // last AG: 30 of 80 MiB
		{"v5-rmapbt-reflink", 300 << 20, []string{"-m", "rmapbt=1,reflink=1"}},
		{"v5-64K-blocks", 600 << 20, []string{"-b", "size=65536"}},
		// The log's block number encodes AG 3 in its high bits.
		{"v5-log-in-AG3", 300 << 20, []string{"-l", "agnum=3"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := xfsImage(t, c.size, c.args...)
			used := checkXFSAgainstTools(t, img, true)
			info, _, _ := xrInUseFile(t, img)
			if info.Filesystem != "xfs" || len(info.Notes) != 0 {
				t.Fatalf("info %+v", info)
			}
			if len(used) == 0 {
				t.Fatal("nothing in use")
			}
		})
	}
}

// TestXFSExternalLogAndRealtime checks that the notes say what the map
// does not cover.
func TestXFSExternalLogAndRealtime(t *testing.T) {
	dir := testenv.TempDir(t)
	img, logImg, rtImg := dir+"/data.img", dir+"/log.img", dir+"/rt.img"
	for _, p := range []string{img, logImg, rtImg} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, 64<<20); err != nil {
			t.Fatal(err)
		}
	}
	testenv.MkfsImage(t, img, "xfs", "-l", "logdev="+logImg, "-r", "rtdev="+rtImg)
	info, used, err := xrInUseFile(t, img)
	if err != nil {
		t.Fatal(err)
	}
	notes := strings.Join(info.Notes, "\n")
	if !strings.Contains(notes, "external log") || !strings.Contains(notes, "realtime section") {
		t.Fatalf("notes do not name the external log and realtime section: %q", info.Notes)
	}
	if len(used) == 0 || used[len(used)-1].End() > info.TotalBytes {
		t.Fatalf("map %v beyond %d", xrHead(used), info.TotalBytes)
	}
}

func TestXFSNotXFS(t *testing.T) {
	img := testenv.NewImage(t, 1<<20)
	if _, _, err := xrInUseFile(t, img); !errors.Is(err, ErrUnknownFilesystem) {
		t.Fatalf("zeroed image: %v", err)
	}
}
