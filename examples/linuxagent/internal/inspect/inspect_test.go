package inspect

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// usedByDumpe2fs is the filesystem's own accounting:
// (block count - free blocks) * block size.
func usedByDumpe2fs(t *testing.T, path string) int64 {
	t.Helper()
	out, err := exec.Command("dumpe2fs", "-h", path).Output()
	if err != nil {
		t.Fatalf("dumpe2fs -h %s: %v", path, err)
	}
	f := map[string]int64{}
	for _, line := range strings.Split(string(out), "\n") {
		k, v, _ := strings.Cut(line, ":")
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
			f[k] = n
		}
	}
	return (f["Block count"] - f["Free blocks"]) * f["Block size"]
}

func decode(t *testing.T, out string) report {
	t.Helper()
	var r report
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("--json output is not one report object: %v\n%s", err, out)
	}
	if dec.More() {
		t.Fatalf("--json printed more than one object:\n%s", out)
	}
	return r
}

// checkReport checks a --json --extents report against dumpe2fs.
func checkReport(t *testing.T, r report, path string, size int64) {
	t.Helper()
	want := usedByDumpe2fs(t, path)
	if r.Filesystem != "ext4" || r.BlockSize != 4096 || r.TotalBytes != size || r.DeviceBytes != size {
		t.Errorf("report = %+v", r)
	}
	if r.UsedBytes != want || r.UsedBytes+r.FreeBytes != r.TotalBytes {
		t.Errorf("used %d free %d total %d; dumpe2fs says used %d", r.UsedBytes, r.FreeBytes, r.TotalBytes, want)
	}
	if r.Extents == nil {
		t.Fatal("--extents gave no extents")
	}
	var sum, end int64
	for _, e := range *r.Extents {
		if e[0] < end || e[1] <= 0 {
			t.Fatalf("extent %v after %d: not sorted and disjoint", e, end)
		}
		end = e[0] + e[1]
		sum += e[1]
	}
	if sum != r.UsedBytes || end > r.TotalBytes {
		t.Errorf("extents sum to %d ending at %d; used %d, total %d", sum, end, r.UsedBytes, r.TotalBytes)
	}
}

// TestImage inspects an ext4 image file made by mkfs (no root needed).
func TestImage(t *testing.T) {
	testenv.Require(t, testenv.Commands("dumpe2fs"))
	const size = 128 << 20
	img := testenv.NewImage(t, size)
	testenv.MkfsImage(t, img, "ext4", "-b", "4096", "-L", "inspected")

	code, out, errs := run(t, img)
	if code != 0 {
		t.Fatalf("inspect %s: exit %d: %s", img, code, errs)
	}
	for _, want := range []string{
		"filesystem:          ext4\n",
		"label:               inspected\n",
		"block size:          4096\n",
		"total bytes:         134217728 (128.0 MiB)\n",
		"used bytes:          " + strconv.FormatInt(usedByDumpe2fs(t, img), 10) + " ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "in-use extents") {
		t.Errorf("extents listed without --extents:\n%s", out)
	}

	// Flags after and before the device.
	for _, args := range [][]string{{img, "--json", "--extents"}, {"--extents", "--json", img}} {
		code, out, errs = run(t, args...)
		if code != 0 {
			t.Fatalf("inspect %v: exit %d: %s", args, code, errs)
		}
		checkReport(t, decode(t, out), img, size)
	}

	code, out, _ = run(t, img, "--extents")
	if code != 0 || !strings.Contains(out, "in-use extents:") {
		t.Errorf("--extents text: exit %d:\n%s", code, out)
	}
	code, out, _ = run(t, img, "--json")
	if r := decode(t, out); code != 0 || r.Extents != nil {
		t.Errorf("--json without --extents: exit %d, extents %v", code, r.Extents)
	}
}

func TestUnknownAndUsage(t *testing.T) {
	img := testenv.NewImage(t, 8<<20) // all zeros
	code, out, errs := run(t, img)
	if code != 1 || out != "" || !strings.Contains(errs, "no supported filesystem") {
		t.Errorf("zeroed image: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	for _, args := range [][]string{{}, {"a", "b"}, {"--bogus", img}} {
		if code, _, errs := run(t, args...); code != 2 || !strings.Contains(errs, "usage:") {
			t.Errorf("inspect %v: exit %d, stderr %q; want 2 and the usage", args, code, errs)
		}
	}
	if code, _, errs := run(t, "/nonexistent/device"); code != 1 || !strings.Contains(errs, "no such file") {
		t.Errorf("missing device: exit %d, stderr %q", code, errs)
	}
	if code, out, _ := run(t, "-h"); code != 0 || !strings.Contains(out, "usage:") {
		t.Errorf("-h: exit %d, stdout %q", code, out)
	}
}

// TestBlockDevice inspects a real loop device holding a filled ext4:
// mounted and not frozen (its journal not checkpointed, which fsparse
// replays in memory, with a note), then frozen, where the size comes from
// BLKGETSIZE64 and everything agrees with dumpe2fs.
func TestBlockDevice(t *testing.T) {
	testenv.Require(t, testenv.LoopDevices, testenv.Commands("dumpe2fs", "fsfreeze"))
	const size = 256 << 20
	d := testenv.NewFilesystem(t, "ext4", size, "-b", "4096")
	testenv.FillFiles(t, d.MountPoint, testenv.FillOptions{Seed: 5, Files: 40})

	code, out, errs := run(t, d.Path, "--json", "--extents")
	if code != 0 {
		t.Fatalf("inspect of the mounted device: exit %d: %s", code, errs)
	}
	if r := decode(t, out); r.Filesystem != "ext4" || r.DeviceBytes != size || !strings.Contains(strings.Join(r.Notes, " "), "replayed") {
		t.Errorf("mounted device: %+v, want ext4, %d bytes and a note on the journal replay", r, size)
	}

	// Frozen, as a backup inspects it (and unlike umount, freezing also
	// settles a filesystem another mount namespace still holds).
	if out, err := exec.Command("fsfreeze", "--freeze", d.MountPoint).CombinedOutput(); err != nil {
		t.Fatalf("fsfreeze --freeze: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("fsfreeze", "--unfreeze", d.MountPoint).Run() })
	code, out, errs = run(t, d.Path, "--json", "--extents")
	if code != 0 {
		t.Fatalf("inspect %s: exit %d: %s", d.Path, code, errs)
	}
	checkReport(t, decode(t, out), d.Path, size)
}

// TestJournalUnreadable inspects a copy of a mounted ext4 whose journal
// superblock is destroyed, so that its journal cannot be replayed: the
// summary comes from the superblock's counters with a note, and
// --extents is refused with advice.
func TestJournalUnreadable(t *testing.T) {
	testenv.Require(t, testenv.LoopDevices, testenv.Commands("debugfs", "cp"))
	const size = 64 << 20
	d := testenv.NewFilesystem(t, "ext4", size, "-b", "4096")
	testenv.FillFiles(t, d.MountPoint, testenv.FillOptions{Seed: 6, Files: 10})
	img := testenv.NewImage(t, size)
	if out, err := exec.Command("cp", d.Image, img).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	out, err := exec.Command("debugfs", "-R", "bmap <8> 0", img).Output()
	if err != nil {
		t.Fatalf("debugfs bmap <8> 0: %v", err)
	}
	jsb, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		t.Fatalf("debugfs bmap <8> 0: %q", out)
	}
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 4096), jsb*4096); err != nil {
		t.Fatal(err)
	}
	f.Close()

	code, stdout, errs := run(t, img, "--json")
	if r := decode(t, stdout); code != 0 || r.Filesystem != "ext4" || !strings.Contains(strings.Join(r.Notes, " "), "superblock's counters") {
		t.Errorf("summary of a filesystem whose journal cannot be replayed: exit %d, %+v, stderr %q", code, r, errs)
	}
	if code, _, errs := run(t, img, "--extents"); code != 1 || !strings.Contains(errs, "mount and unmount it once") {
		t.Errorf("--extents: exit %d, stderr %q; want 1 and advice", code, errs)
	}
}

// TestMountedXFSBypassesPageCache inspects a mounted XFS frozen twice,
// with 32 MiB written in between. XFS writes its metadata around the
// block device's page cache, so a buffered reader would see the AGFs and
// log it cached the first time, clean and stale, and miss the new blocks.
func TestMountedXFSBypassesPageCache(t *testing.T) {
	testenv.Require(t, testenv.LoopDevices, testenv.Commands("fsfreeze"))
	d := testenv.NewFilesystem(t, "xfs", 320<<20)
	freeze := func(op string) {
		t.Helper()
		if out, err := exec.Command("fsfreeze", op, d.MountPoint).CombinedOutput(); err != nil {
			t.Fatalf("fsfreeze %s: %v: %s", op, err, out)
		}
	}
	t.Cleanup(func() { _ = exec.Command("fsfreeze", "--unfreeze", d.MountPoint).Run() })
	used := func() int64 {
		t.Helper()
		freeze("--freeze")
		defer freeze("--unfreeze")
		code, out, errs := run(t, d.Path, "--json")
		if code != 0 {
			t.Fatalf("inspect %s: exit %d: %s", d.Path, code, errs)
		}
		r := decode(t, out)
		if !strings.Contains(strings.Join(r.Notes, " "), "mounted at "+d.MountPoint) {
			t.Errorf("notes %q do not say where it is mounted", r.Notes)
		}
		return r.UsedBytes
	}
	before := used()
	data := bytes.Repeat([]byte("blockimage"), (32<<20)/10)
	if err := os.WriteFile(d.MountPoint+"/new", data, 0o644); err != nil {
		t.Fatal(err)
	}
	if after := used(); after-before < int64(len(data)) {
		t.Errorf("used %d bytes before writing %d bytes and %d after: stale metadata", before, len(data), after)
	}
}

// TestDetectedNotMapped: a filesystem fsparse names but cannot map is
// named in the error, with exit status 1.
func TestDetectedNotMapped(t *testing.T) {
	testenv.Require(t, testenv.Commands("mkfs.vfat"))
	img := testenv.NewImage(t, 16<<20)
	if out, err := exec.Command("mkfs.vfat", "-n", "STICK", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.vfat: %v: %s", err, out)
	}
	code, out, errs := run(t, img, "--json")
	if code != 1 || out != "" || !strings.Contains(errs, "vfat") || !strings.Contains(errs, "copy all 16777216 bytes") {
		t.Errorf("FAT image: exit %d, stdout %q, stderr %q", code, out, errs)
	}
}

// TestPartitionTable: a whole disk with an MBR is not a filesystem, and
// the message says to look at its partitions.
func TestPartitionTable(t *testing.T) {
	img := testenv.NewImage(t, 4<<20)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	mbr := make([]byte, 512)
	copy(mbr[446:], []byte{0, 0, 0, 0, 0x83, 0, 0, 0, 0, 8, 0, 0, 0, 0x18, 0, 0}) // Linux, LBA 2048, 6144 sectors
	mbr[510], mbr[511] = 0x55, 0xAA
	if _, err := f.WriteAt(mbr, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	code, _, errs := run(t, img)
	if code != 1 || !strings.Contains(errs, "no supported filesystem") || !strings.Contains(errs, "an MBR partition table") {
		t.Errorf("disk with an MBR: exit %d, stderr %q", code, errs)
	}
}
