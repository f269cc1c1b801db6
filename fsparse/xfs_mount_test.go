package fsparse

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
)

// xrCopyExtents copies only the given extents of src into a new zeroed
// (sparse) image of the same size and returns its path.
func xrCopyExtents(t *testing.T, src string, es []Extent) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		t.Fatal(err)
	}
	dst := testenv.NewImage(t, st.Size())
	out, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	for _, e := range es {
		w := io.NewOffsetWriter(out, e.Offset)
		if _, err := io.Copy(w, io.NewSectionReader(in, e.Offset, e.Length)); err != nil {
			t.Fatalf("copying %+v: %v", e, err)
		}
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// xfsRepairClean runs xfs_repair -n, which changes nothing and exits
// non-zero when it finds a problem.
func xfsRepairClean(t *testing.T, img string) {
	t.Helper()
	xrRequire(t, "xfs_repair")
	// force_geometry lets it check a single-AG filesystem, which has
	// no secondary superblock to compare the primary with.
	if out, err := exec.Command("xfs_repair", "-n", "-f", "-o", "force_geometry", img).CombinedOutput(); err != nil {
		t.Fatalf("xfs_repair -n on the copy: %v\n%s", err, out)
	}
}

// xfsRepairOutput returns what xfs_repair -n says about img, with the
// image's path taken out, and without the per-AG progress lines and blank
// lines, which its threads print in varying order.
func xfsRepairOutput(t *testing.T, img string) string {
	t.Helper()
	xrRequire(t, "xfs_repair")
	out, _ := exec.Command("xfs_repair", "-n", "-f", "-o", "force_geometry", img).CombinedOutput()
	var keep []string
	for _, l := range strings.Split(strings.ReplaceAll(string(out), img, "IMG"), "\n") {
		if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "- agno = ") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// xfsDigestOf mounts img read-only (without log recovery, so a covered
// log is left as it is, and nouuid because its source may still be
// mounted) and digests its files.
func xfsDigestOf(t *testing.T, img string) map[string]string {
	t.Helper()
	d := testenv.AttachLoop(t, img)
	d.FSType = "xfs"
	mp := d.Mount(t, "ro", "norecovery", "nouuid")
	sums := testenv.TreeDigest(t, mp)
	d.Unmount(t)
	return sums
}

// xfsFilled makes, fills and partly empties a mounted XFS, returning the
// device (still mounted) and the digest of what remains.
func xfsFilled(t *testing.T, size int64, fill testenv.FillOptions, mkfsArgs ...string) (*testenv.LoopDevice, map[string]string) {
	t.Helper()
	testenv.Require(t, testenv.Root, testenv.LoopDevices, testenv.Mkfs("xfs"), testenv.Mountable("xfs"), testenv.Commands("nsenter"))
	d := testenv.NewFilesystem(t, "xfs", size, mkfsArgs...)
	paths := testenv.FillFiles(t, d.MountPoint, fill)
	// Delete every other file: holes in the allocated space make many
	// free extents, and with small blocks a multi-level bnobt.
	for i, p := range paths {
		if i%2 == 1 {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Some files in a directory of their own, then the directory gone.
	gone := filepath.Join(d.MountPoint, "gone")
	testenv.FillFiles(t, gone, testenv.FillOptions{Seed: fill.Seed + 1, Files: 10, MaxSize: 256 << 10, Dirs: 2})
	if err := os.RemoveAll(gone); err != nil {
		t.Fatal(err)
	}
	return d, testenv.TreeDigest(t, d.MountPoint)
}

// xrUnmount unmounts d's filesystem and makes sure the kernel has shut
// it down, so that the image holds a cleanly unmounted filesystem.
//
// On this machine mounts are private (no shared propagation), so a
// process that got a mount namespace of its own while the filesystem was
// mounted (libvirtd starts every qemu so, for other tests) keeps a copy
// of the mount, and our umount leaves the filesystem alive, its log
// dirty. Such copies of our own test mount are unmounted in those
// namespaces with nsenter; then an exclusive open of the device proves
// that no filesystem holds it any more.
func xrUnmount(t *testing.T, d *testenv.LoopDevice) {
	t.Helper()
	mp := d.MountPoint
	// Not d.Unmount: it waits for other namespaces to let go, which a
	// long-lived qemu (or the holder in TestXFSUnmountInOtherNamespace)
	// does not do; their copies are removed below instead.
	if out, err := exec.Command("umount", mp).CombinedOutput(); err != nil {
		t.Fatalf("umount %s: %v: %s", mp, err, out)
	}
	d.MountPoint = "" // tells testenv's cleanup it is unmounted
	self, _ := os.Readlink("/proc/self/ns/mnt")
	done := map[string]bool{self: true}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		ns, err := os.Readlink(p + "/ns/mnt")
		if err != nil || done[ns] {
			continue
		}
		info, err := os.ReadFile(p + "/mountinfo")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(info), "\n") {
			// "... MOUNTPOINT OPTIONS ... - FSTYPE SOURCE SUPEROPTS"
			pre, post, ok := strings.Cut(line, " - ")
			f, g := strings.Fields(pre), strings.Fields(post)
			if !ok || len(f) < 5 || len(g) < 2 || g[1] != d.Path || f[4] != mp {
				continue
			}
			done[ns] = true
			if out, err := exec.Command("nsenter", "--mount="+p+"/ns/mnt", "umount", mp).CombinedOutput(); err != nil {
				t.Fatalf("unmounting our %s from the mount namespace of %s (%s): %v: %s", mp, p, ns, err, out)
			}
			t.Logf("unmounted a copy of %s left in the mount namespace of %s", mp, p)
			break
		}
	}
	f, err := os.OpenFile(d.Path, os.O_RDONLY|syscall.O_EXCL, 0)
	if err != nil {
		t.Fatalf("%s is still in use after unmounting it everywhere: %v", d.Path, err)
	}
	f.Close()
}

// TestXFSFilledCopy fills real XFS filesystems with files, deletes some,
// unmounts, maps them and checks the map against xfs_db and partclone;
// then copies only the in-use extents to a zeroed image, which must pass
// xfs_repair -n and hold the same files.
func TestXFSFilledCopy(t *testing.T) {
	for _, c := range []struct {
		name      string
		size      int64
		fill      testenv.FillOptions
		args      []string
		multiTree bool // the bnobt must have more than one level
	}{
		{"v5-ag4-300M", 300 << 20, testenv.FillOptions{Seed: 1, Files: 60, MaxSize: 3 << 20}, nil, false},
		{"v5-1K-ag1-many-holes", 64 << 20, testenv.FillOptions{Seed: 3, Files: 700, MaxSize: 6 << 10, Dirs: 3}, []string{"-b", "size=1024", "-d", "agcount=1"}, true},
		// rmapbt blocks also come from the AGFL and count in agf_btreeblks.
		{"v5-1K-ag1-rmapbt-holes", 64 << 20, testenv.FillOptions{Seed: 12, Files: 700, MaxSize: 6 << 10, Dirs: 3}, []string{"-b", "size=1024", "-d", "agcount=1", "-m", "rmapbt=1"}, true},
		{"v5-ag16-2G-sparse", 2 << 30, testenv.FillOptions{Seed: 5, Files: 30, MaxSize: 6 << 20}, []string{"-d", "agcount=16"}, false},
		{"v5-4K-sectors", 300 << 20, testenv.FillOptions{Seed: 10, Files: 40, MaxSize: 2 << 20}, []string{"-s", "size=4096"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, want := xfsFilled(t, c.size, c.fill, c.args...)
			xrUnmount(t, d)
			used := checkXFSAgainstTools(t, d.Image, true)
			if c.multiTree {
				if lv := xfsOracle(t, d.Image).maxBnoLevel; lv < 2 {
					t.Fatalf("bnobt has %d level(s); the test meant to walk a multi-level tree", lv)
				}
			}
			cp := xrCopyExtents(t, d.Image, used)
			xfsRepairClean(t, cp)
			if d := testenv.TreeDiff(want, xfsDigestOf(t, cp)); d != "" {
				t.Fatalf("the copy differs from the source: %s", d)
			}
		})
	}
}

// TestXFSFrozenCopy maps a mounted filesystem while it is frozen, as a
// backup does: its log is covered, not clean, and the map must still be
// exact and the copy sound.
func TestXFSFrozenCopy(t *testing.T) {
	testenv.Require(t, testenv.Commands("fsfreeze", "xfs_logprint"))
	d, want := xfsFilled(t, 300<<20, testenv.FillOptions{Seed: 6, Files: 40, MaxSize: 2 << 20})
	if out, err := exec.Command("fsfreeze", "--freeze", d.MountPoint).CombinedOutput(); err != nil {
		t.Fatalf("fsfreeze: %v: %s", err, out)
	}
	// Snapshot the backing file while frozen: the loop device writes
	// through its page cache, so the file shows what XFS wrote.
	snap := filepath.Join(testenv.TempDir(t), "frozen.img")
	cpOut, cpErr := exec.Command("cp", "--sparse=always", d.Image, snap).CombinedOutput()
	if out, err := exec.Command("fsfreeze", "--unfreeze", d.MountPoint).CombinedOutput(); err != nil {
		t.Fatalf("fsfreeze --unfreeze: %v: %s", err, out)
	}
	if cpErr != nil {
		t.Fatalf("cp: %v: %s", cpErr, cpOut)
	}
	if lp := xfsLogprintState(t, snap); lp != "DIRTY" {
		t.Fatalf("xfs_logprint says the frozen log is %s; this test expects a covered (DIRTY to logprint) log", lp)
	}
	info, _, err := xrInUseFile(t, snap)
	if err != nil {
		t.Fatalf("InUse on a frozen filesystem: %v", err)
	}
	if !strings.Contains(strings.Join(info.Notes, " "), "covered") {
		t.Fatalf("notes %q do not say the log is covered", info.Notes)
	}
	used := checkXFSAgainstTools(t, snap, false)
	cp := xrCopyExtents(t, snap, used)
	// A frozen filesystem's superblock counters are stale (they are
	// lazy) and its log is not clean, so xfs_repair -n complains about
	// the source snapshot itself; the copy must draw the same verdict.
	src, dst := xfsRepairOutput(t, snap), xfsRepairOutput(t, cp)
	if src != dst {
		t.Fatalf("xfs_repair -n differs between the frozen snapshot and its copy:\n--- snapshot\n%s\n--- copy\n%s", src, dst)
	}
	if d := testenv.TreeDiff(want, xfsDigestOf(t, cp)); d != "" {
		t.Fatalf("the copy of the frozen filesystem differs from the source: %s", d)
	}
}

// TestXFSNeedsRecovery snapshots a mounted, busy filesystem without
// freezing it, like a crash: the map must be refused.
func TestXFSNeedsRecovery(t *testing.T) {
	testenv.Require(t, testenv.Commands("xfs_logprint"))
	d, _ := xfsFilled(t, 300<<20, testenv.FillOptions{Seed: 7, Files: 20, MaxSize: 1 << 20})
	// Fresh changes just before the snapshot keep the log active: XFS
	// covers an idle log only after about 30 s without changes.
	testenv.FillFiles(t, filepath.Join(d.MountPoint, "late"), testenv.FillOptions{Seed: 8, Files: 5})
	snap := filepath.Join(testenv.TempDir(t), "live.img")
	if out, err := exec.Command("cp", "--sparse=always", d.Image, snap).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	if lp := xfsLogprintState(t, snap); lp != "DIRTY" {
		t.Fatalf("xfs_logprint says %s", lp)
	}
	info, _, err := xrInUseFile(t, snap)
	if !errors.Is(err, ErrNeedsRecovery) {
		t.Fatalf("InUse on a live snapshot: %v (notes %q), want ErrNeedsRecovery", err, info.Notes)
	}
	xrUnmount(t, d)
	if _, _, err := xrInUseFile(t, d.Image); err != nil {
		t.Fatalf("after unmount: %v", err)
	}
	if lp := xfsLogprintState(t, d.Image); lp != "CLEAN" {
		t.Fatalf("xfs_logprint says %s after unmount", lp)
	}
}

// xfsLogprintState returns CLEAN or DIRTY as xfs_logprint -t sees it.
func xfsLogprintState(t *testing.T, img string) string {
	t.Helper()
	out, err := exec.Command("xfs_logprint", "-t", img).CombinedOutput()
	if err != nil {
		t.Fatalf("xfs_logprint -t: %v: %s", err, out)
	}
	s := string(out)
	for _, st := range []string{"CLEAN", "DIRTY"} {
		if strings.Contains(s, "<"+st+">") {
			return st
		}
	}
	t.Fatalf("xfs_logprint -t printed no state: %s", out)
	return ""
}

// TestXFSv4Populated covers the v4 format with data. This kernel, like
// most current ones, is built without CONFIG_XFS_SUPPORT_V4 and cannot
// mount it, so mkfs.xfs writes the files itself from a prototype file.
// The copy is checked by xfs_repair -n; the files' blocks are in the map
// because the free extents equal xfs_db's.
func TestXFSv4Populated(t *testing.T) {
	for _, c := range []struct {
		name string
		size int64
		args []string
	}{
		{"v4-ag16-320M", 320 << 20, []string{"-m", "crc=0", "-d", "agcount=16"}},
		{"v4-1K-ag1", 64 << 20, []string{"-m", "crc=0", "-b", "size=1024", "-d", "agcount=1"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := testenv.TempDir(t)
			testenv.FillFiles(t, src, testenv.FillOptions{Seed: 9, Files: 40, MaxSize: 1 << 20})
			img := testenv.NewImage(t, c.size)
			testenv.MkfsImage(t, img, "xfs", append(c.args, "-p", xfsProtofile(t, src))...)
			if n := strings.Count(xfsDB(t, img, "sb 0", "p icount"), "icount"); n != 1 {
				t.Fatal("xfs_db printed no icount")
			}
			used := checkXFSAgainstTools(t, img, true)
			info, _, _ := xrInUseFile(t, img)
			if info.UsedBytes < 20<<20 {
				t.Fatalf("only %d bytes in use after writing about 20 MiB of files", info.UsedBytes)
			}
			xfsRepairClean(t, xrCopyExtents(t, img, used))
		})
	}
}

// xfsProtofile writes an mkfs.xfs prototype file that copies the tree
// below dir (directories and regular files) into the new filesystem.
func xfsProtofile(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("/dev/null\n0 0\nd--755 0 0\n")
	var walk func(string)
	walk = func(d string) {
		ents, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			p := filepath.Join(d, e.Name())
			if e.IsDir() {
				fmt.Fprintf(&b, "%s d--755 0 0\n", e.Name())
				walk(p)
				b.WriteString("$\n")
			} else {
				fmt.Fprintf(&b, "%s ---644 0 0 %s\n", e.Name(), p)
			}
		}
	}
	walk(dir)
	b.WriteString("$\n")
	proto := filepath.Join(testenv.TempDir(t), "proto")
	if err := os.WriteFile(proto, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return proto
}

// TestXFSUnmountInOtherNamespace reproduces what libvirtd's qemu
// processes do to our mounts here: a process that takes a private mount
// namespace while the filesystem is mounted keeps it alive after our
// umount, with a dirty log. xrUnmount must find and remove that copy so
// that the image is clean.
func TestXFSUnmountInOtherNamespace(t *testing.T) {
	testenv.Require(t, testenv.Commands("unshare", "xfs_logprint"))
	d, _ := xfsFilled(t, 300<<20, testenv.FillOptions{Seed: 11, Files: 10, MaxSize: 1 << 20})
	holder := exec.Command("unshare", "--mount", "--propagation", "unchanged", "sh", "-c", "echo ready; exec sleep 600")
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	// The namespace exists once the shell inside it speaks.
	if _, err := io.ReadFull(out, make([]byte, len("ready\n"))); err != nil {
		t.Fatalf("unshare: %v", err)
	}
	xrUnmount(t, d)
	if lp := xfsLogprintState(t, d.Image); lp != "CLEAN" {
		t.Fatalf("xfs_logprint says %s after unmounting everywhere", lp)
	}
	if _, _, err := xrInUseFile(t, d.Image); err != nil {
		t.Fatal(err)
	}
}

// TestXFSWrappedLog fills a filesystem with the smallest log mkfs allows
// until the log has wrapped (its first block carries cycle 2 or more), so
// that finding the head means finding where the cycle number drops in the
// middle of the log. The unmounted image must map, and exactly.
func TestXFSWrappedLog(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.LoopDevices, testenv.Mkfs("xfs"), testenv.Mountable("xfs"), testenv.Commands("nsenter"))
	d := testenv.NewFilesystem(t, "xfs", 64<<20, "-b", "size=1024", "-d", "agcount=1", "-l", "size=3527b")
	for round := uint64(0); round < 2; round++ {
		paths := testenv.FillFiles(t, filepath.Join(d.MountPoint, fmt.Sprint(round)), testenv.FillOptions{Seed: 20 + round, Files: 3000, MaxSize: 64, Dirs: 4})
		for i := 0; i < len(paths); i += 2 {
			if err := os.Remove(paths[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	xrUnmount(t, d)
	img, err := os.ReadFile(d.Image)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := readXFSSuper(xrMem(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	at := sb.agOffset(uint32(sb.logstart>>sb.agblklog), uint32(sb.logstart&(1<<sb.agblklog-1)))
	first := binary.BigEndian.Uint32(img[at:])
	if first == xlogHeaderMagic {
		first = binary.BigEndian.Uint32(img[at+4:])
	}
	if first < 2 {
		t.Fatalf("the log has not wrapped (cycle %d at its start); the test needs more log traffic", first)
	}
	checkXFSAgainstTools(t, d.Image, true)
}
