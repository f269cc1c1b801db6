package fsparse

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
)

const extMiB = 1 << 20

// An extShape is one way to make an ext filesystem.
type extShape struct {
	name, fstype string
	size         int64
	args         []string
	// partclone is false where partclone.extfs cannot map the shape
	// (bigalloc: it fails with "bitmap error at 0 group").
	partclone bool
}

var extShapes = []extShape{
	{"ext2-1k-16M", "ext2", 16 * extMiB, []string{"-b", "1024"}, true},
	{"ext3-2k-64M", "ext3", 64 * extMiB, []string{"-b", "2048"}, true},
	{"ext4-4k-256M", "ext4", 256 * extMiB, nil, true},
	{"ext4-1k-noflex-64M", "ext4", 64 * extMiB, []string{"-b", "1024", "-O", "^flex_bg"}, true},
	{"ext4-metabg-128M", "ext4", 128 * extMiB, []string{"-b", "1024", "-O", "meta_bg,^resize_inode"}, true},
	{"ext4-bigalloc-256M", "ext4", 256 * extMiB, []string{"-O", "bigalloc", "-C", "16384"}, false},
	{"ext4-bigalloc-1k-64M", "ext4", 64 * extMiB, []string{"-b", "1024", "-O", "bigalloc", "-C", "16384"}, false},
	{"ext4-64bit-nojournal-1G", "ext4", 1024 * extMiB, []string{"-O", "64bit,^has_journal"}, true},
	{"ext4-32bit-desc-512M", "ext4", 512 * extMiB, []string{"-O", "^64bit", "-b", "2048"}, true},
	{"ext4-sparse_super2-128M", "ext4", 128 * extMiB, []string{"-b", "1024", "-O", "sparse_super2", "-E", "num_backup_sb=1"}, true},
	{"ext4-nosparse-short-last-group-37M", "ext4", 37*extMiB + 5*4096, []string{"-O", "^sparse_super,^resize_inode", "-g", "4096"}, true},
	{"ext4-no-uninit-bg-64M", "ext4", 64 * extMiB, []string{"-O", "^metadata_csum,^uninit_bg", "-b", "4096"}, true},
	// 256 groups: 16 descriptor blocks, crossing one-block windows.
	{"ext4-1k-g256-64M", "ext4", 64 * extMiB, []string{"-b", "1024", "-g", "256"}, true},
	// 128 groups in 8 meta groups of 16 (64-byte descriptors).
	{"ext4-metabg-64bit-1k-g1024-128M", "ext4", 128 * extMiB, []string{"-b", "1024", "-g", "1024", "-O", "meta_bg,^resize_inode,64bit"}, true},
	{"ext4-4k-8G", "ext4", 8192 * extMiB, nil, true},
	// BLOCK_UNINIT under the older uninit_bg (crc16 descriptor checksums).
	{"ext4-uninit_bg-128M", "ext4", 128 * extMiB, []string{"-O", "^metadata_csum,uninit_bg"}, true},
}

// TestExtFreshImages maps freshly made filesystems in image files (no
// root needed) and checks the used bytes against dumpe2fs and partclone,
// and that the in-use extents alone make a filesystem e2fsck passes.
func TestExtFreshImages(t *testing.T) {
	testenv.Require(t, testenv.Commands("dumpe2fs", "e2fsck", "debugfs", "partclone.extfs"))
	for _, sh := range extShapes {
		t.Run(sh.name, func(t *testing.T) {
			t.Parallel()
			img := testenv.NewImage(t, sh.size)
			testenv.MkfsImage(t, img, sh.fstype, sh.args...)
			checkExtImage(t, img, sh)
		})
	}
}

// checkExtImage runs every oracle on a filesystem at path, unmounted or
// frozen, and returns the map.
func checkExtImage(t *testing.T, path string, sh extShape) (Info, []Extent) {
	t.Helper()
	info, es := extMapImage(t, path)
	if info.Filesystem != sh.fstype {
		t.Errorf("Filesystem = %q, want %q", info.Filesystem, sh.fstype)
	}
	want := extDumpe2fsUsed(t, path)
	if info.UsedBytes != want {
		out, _ := exec.Command("dumpe2fs", "-h", path).CombinedOutput()
		mounts, _ := os.ReadFile("/proc/self/mountinfo")
		t.Errorf("UsedBytes = %d, dumpe2fs says %d (diff %d); notes %q\n%s\nmounts:\n%s", info.UsedBytes, want, info.UsedBytes-want, info.Notes, out, mounts)
	}
	if info.UsedBytes+info.FreeBytes != info.TotalBytes {
		t.Errorf("used %d + free %d != total %d", info.UsedBytes, info.FreeBytes, info.TotalBytes)
	}
	pc := int64(-1)
	if sh.partclone {
		if pc = extPartcloneUsed(t, path); pc != info.UsedBytes {
			t.Errorf("UsedBytes = %d, partclone says %d (diff %d)", info.UsedBytes, pc, info.UsedBytes-pc)
		}
	}
	t.Logf("%s: used %d bytes in %d extents, dumpe2fs %d, partclone %d (-1: cannot map), metadata read %d bytes",
		info.Filesystem, info.UsedBytes, len(es), want, pc, info.MetadataBytesRead)
	if s := extSuperOf(t, path); s.compat&extCompatHasJournal != 0 {
		for _, b := range extJournalBlocks(t, path) {
			if !extCovered(es, b*s.blockSize, s.blockSize) {
				t.Fatalf("journal block %d is not in the map", b)
			}
		}
	}
	// The same map from windows of one descriptor block.
	if f, err := os.Open(path); err != nil {
		t.Fatal(err)
	} else {
		_, small, err := extInUseWindow(context.Background(), f, extDeviceSize(t, f), 1)
		f.Close()
		if err != nil || !slices.Equal(small, es) {
			t.Errorf("with one-block descriptor windows: err %v, %d extents, want %d", err, len(small), len(es))
		}
	}
	if info.MetadataBytesRead <= 0 || info.MetadataBytesRead > info.TotalBytes/16 {
		t.Errorf("MetadataBytesRead = %d for a %d-byte filesystem", info.MetadataBytesRead, info.TotalBytes)
	}
	extE2fsckClean(t, extCopyExtents(t, path, es))
	return info, es
}

// extSuperOf reads the superblock at path.
func extSuperOf(t *testing.T, path string) *extSuper {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s, err := readExtSuper(f, extDeviceSize(t, f))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestExtFilled fills mounted filesystems with real files, deletes some,
// freezes them, and checks the map against dumpe2fs and partclone; then
// copies only the in-use extents to a zeroed image and checks it with
// e2fsck and by comparing every file.
func TestExtFilled(t *testing.T) {
	testenv.Require(t, testenv.LoopDevices, testenv.Commands("dumpe2fs", "e2fsck", "debugfs", "partclone.extfs"))
	for i, sh := range extShapes {
		t.Run(sh.name, func(t *testing.T) {
			t.Parallel()
			d := testenv.NewFilesystem(t, sh.fstype, sh.size, sh.args...)
			files := int(min(sh.size/(2*extMiB), 60))
			paths := testenv.FillFiles(t, d.MountPoint, testenv.FillOptions{Seed: uint64(i), Files: files, MaxSize: extMiB})
			for j, p := range paths {
				if j%3 == 0 {
					if err := os.Remove(p); err != nil {
						t.Fatal(err)
					}
				}
			}
			want := testenv.TreeDigest(t, d.MountPoint)
			// Frozen rather than unmounted: freezing is what a backup
			// does, and unlike umount it also settles a filesystem that
			// another mount namespace (a libvirt guest's, say, cloned
			// while it was mounted) still holds.
			extFreeze(t, d.MountPoint)
			_, es := checkExtImage(t, d.Path, sh)

			c := testenv.AttachLoop(t, extCopyExtents(t, d.Path, es))
			c.FSType = sh.fstype
			mp := c.Mount(t, "ro")
			if d := testenv.TreeDiff(want, testenv.TreeDigest(t, mp)); d != "" {
				t.Fatalf("the copy of the in-use extents differs from the source: %s", d)
			}
		})
	}
}

// TestExtNeedsRecovery copies a mounted ext4 whose journal is not
// checkpointed (needs_recovery set, as after a crash), the trap partclone
// falls into. InUse replays the journal in memory: a copy of only its
// extents, once e2fsck has replayed the copy's journal, holds the same
// files as the source; its map covers everything the recovered original
// uses. With the journal superblock destroyed, InUse gives
// ErrNeedsRecovery instead.
func TestExtNeedsRecovery(t *testing.T) {
	testenv.Require(t, testenv.LoopDevices, testenv.Commands("dumpe2fs", "e2fsck", "cp", "partclone.extfs"))
	for _, sh := range []extShape{
		{name: "ext4-1k", fstype: "ext4", size: 64 * extMiB, args: []string{"-b", "1024"}},
		{name: "ext4-4k-64bit", fstype: "ext4", size: 256 * extMiB, args: []string{"-b", "4096", "-O", "64bit"}},
		{name: "ext3-1k", fstype: "ext3", size: 64 * extMiB, args: []string{"-b", "1024"}},
	} {
		t.Run(sh.name, func(t *testing.T) {
			t.Parallel()
			d := testenv.NewFilesystem(t, sh.fstype, sh.size, sh.args...)
			paths := testenv.FillFiles(t, d.MountPoint, testenv.FillOptions{Seed: 7, Files: 30})
			for _, p := range paths[:10] {
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
			}
			testenv.FillFiles(t, filepath.Join(d.MountPoint, "more"), testenv.FillOptions{Seed: 8, Files: 10})
			want := testenv.TreeDigest(t, d.MountPoint)
			crashed := testenv.NewImage(t, sh.size)
			if out, err := exec.Command("cp", d.Image, crashed).CombinedOutput(); err != nil {
				t.Fatalf("cp: %v: %s", err, out)
			}
			if s := extSuperOf(t, crashed); !s.needsRecovery {
				t.Fatal("the copy of the mounted filesystem does not need recovery")
			}
			// What partclone makes of it: it reads the bitmaps as they
			// are, and refuses when the superblock's lazy counters
			// disagree with them unless forced (-F).
			pcOut, pcErr := exec.Command("partclone.extfs", "-f", "0", "-F", "-D", "-s", crashed, "-O", filepath.Join(t.TempDir(), "log"), "-L", filepath.Join(t.TempDir(), "plog")).CombinedOutput()
			pcStale := int64(-1)
			if m := extPartcloneUsedRE.FindSubmatch(pcOut); m != nil {
				blocks, _ := strconv.ParseInt(string(m[1]), 10, 64)
				bs, _ := strconv.ParseInt(string(m[2]), 10, 64)
				pcStale = blocks * bs
			}

			info, es := extMapImage(t, crashed)
			if len(info.Notes) == 0 || !strings.Contains(strings.Join(info.Notes, "\n"), "replayed") {
				t.Errorf("no note of the replay: %q", info.Notes)
			}
			backup := extCopyExtents(t, crashed, es)

			// Recover both, as a restore would.
			for _, img := range []string{crashed, backup} {
				if out, err := exec.Command("e2fsck", "-fy", img).CombinedOutput(); err != nil {
					var ee *exec.ExitError
					if !errors.As(err, &ee) || ee.ExitCode() > 1 {
						t.Fatalf("e2fsck -fy %s: %v\n%s", img, err, out)
					}
				}
				extE2fsckClean(t, img)
			}
			recovered, res := extMapImage(t, crashed)
			for _, e := range res {
				if !extCovered(es, e.Offset, e.Length) {
					t.Errorf("the recovered filesystem uses %+v, which the replayed map misses", e)
				}
			}
			t.Logf("needing recovery: ours (journal replayed) %d bytes used, partclone -F %d (err %v); after e2fsck recovery %d",
				info.UsedBytes, pcStale, pcErr, recovered.UsedBytes)

			c := testenv.AttachLoop(t, backup)
			c.FSType = sh.fstype
			if d := testenv.TreeDiff(want, testenv.TreeDigest(t, c.Mount(t, "ro"))); d != "" {
				t.Fatalf("the backup of the in-use extents differs from the source: %s", d)
			}
		})
	}
}

// TestExtJournalUnreadable destroys the journal superblock of a filesystem
// needing recovery: InUse must give ErrNeedsRecovery, not a map from stale
// bitmaps.
func TestExtJournalUnreadable(t *testing.T) {
	testenv.Require(t, testenv.LoopDevices, testenv.Commands("cp"))
	d := testenv.NewFilesystem(t, "ext4", 64*extMiB)
	testenv.FillFiles(t, d.MountPoint, testenv.FillOptions{Seed: 3, Files: 10})
	crashed := testenv.NewImage(t, 64*extMiB)
	if out, err := exec.Command("cp", d.Image, crashed).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	f, err := os.OpenFile(crashed, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s, err := readExtSuper(f, 64*extMiB)
	if err != nil {
		t.Fatal(err)
	}
	jb := extJournalBlocks(t, crashed)
	if _, err := f.WriteAt(make([]byte, s.blockSize), jb[0]*s.blockSize); err != nil {
		t.Fatal(err)
	}
	info, _, err := InUse(context.Background(), f, 64*extMiB)
	if !errors.Is(err, ErrNeedsRecovery) {
		t.Fatalf("InUse with the journal superblock zeroed: err = %v, want ErrNeedsRecovery", err)
	}
	if info.Filesystem != "ext4" || len(info.Notes) == 0 {
		t.Errorf("Info with ErrNeedsRecovery = %+v, want the superblock's facts and a note", info)
	}
}

// TestExtResized grows filesystems offline with resize2fs (the descriptor
// table grows into the reserved GDT blocks, or with meta_bg into new meta
// groups) and shrinks one, then checks them like fresh ones.
func TestExtResized(t *testing.T) {
	testenv.Require(t, testenv.Commands("resize2fs", "dumpe2fs", "e2fsck", "debugfs", "partclone.extfs"))
	for _, tc := range []struct {
		sh       extShape
		newSize  int64
		resizeTo string
	}{
		{extShape{"grow-1k-64M-to-1G", "ext4", 64 * extMiB, []string{"-b", "1024"}, true}, 1024 * extMiB, ""},
		{extShape{"grow-metabg-64M-to-512M", "ext4", 64 * extMiB, []string{"-b", "1024", "-O", "meta_bg,^resize_inode"}, true}, 512 * extMiB, ""},
		{extShape{"shrink-ext3-256M-to-100M", "ext3", 256 * extMiB, []string{"-b", "4096"}, true}, 256 * extMiB, "100M"},
	} {
		t.Run(tc.sh.name, func(t *testing.T) {
			t.Parallel()
			img := testenv.NewImage(t, tc.sh.size)
			testenv.MkfsImage(t, img, tc.sh.fstype, tc.sh.args...)
			if err := os.Truncate(img, tc.newSize); err != nil {
				t.Fatal(err)
			}
			// resize2fs wants a checked filesystem.
			if out, err := exec.Command("e2fsck", "-fy", img).CombinedOutput(); err != nil {
				t.Fatalf("e2fsck -fy: %v: %s", err, out)
			}
			args := []string{img}
			if tc.resizeTo != "" {
				args = append(args, tc.resizeTo)
			}
			if out, err := exec.Command("resize2fs", args...).CombinedOutput(); err != nil {
				t.Fatalf("resize2fs %v: %v: %s", args, err, out)
			}
			checkExtImage(t, img, tc.sh)
		})
	}
}

// TestExtFastCommitRefused: a fast-commit journal's fast-commit area
// records allocations that only ext4's own replay understands, so a copy
// of a mounted ext4 with fast_commit is refused with ErrNeedsRecovery
// rather than mapped without them.
func TestExtFastCommitRefused(t *testing.T) {
	testenv.Require(t, testenv.LoopDevices, testenv.Commands("cp"))
	d := testenv.NewFilesystem(t, "ext4", 64*extMiB, "-O", "fast_commit")
	testenv.FillFiles(t, d.MountPoint, testenv.FillOptions{Seed: 11, Files: 5})
	crashed := testenv.NewImage(t, 64*extMiB)
	if out, err := exec.Command("cp", d.Image, crashed).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	if !extSuperOf(t, crashed).needsRecovery {
		t.Fatal("the copy of the mounted filesystem does not need recovery")
	}
	f, err := os.Open(crashed)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, _, err = InUse(context.Background(), f, 64*extMiB)
	if !errors.Is(err, ErrNeedsRecovery) || !strings.Contains(err.Error(), "fast commit") {
		t.Fatalf("InUse on a fast-commit filesystem needing recovery: err = %v, want ErrNeedsRecovery naming fast commit", err)
	}
}
