package fsparse

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
)

// blkidValue returns blkid's TAG for the image, "" when it has none.
func blkidValue(t *testing.T, img, tag string) string {
	t.Helper()
	out, err := exec.Command("blkid", "-p", "-o", "value", "-s", tag, img).Output()
	if err != nil && len(out) == 0 {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// TestDetectOnly names btrfs, FAT12/16/32 and swap images made by their
// own tools, with blkid as the oracle for type, UUID and label; InUse says
// ErrUnsupported, never a map.
func TestDetectOnly(t *testing.T) {
	testenv.Require(t, testenv.Commands("blkid", "mkfs.btrfs", "mkfs.vfat", "mkswap"))
	cases := []struct {
		name, fstype string
		size         int64
		cmd          []string
		total        int64 // 0: not checked
	}{
		{"btrfs", "btrfs", 256 << 20, []string{"mkfs.btrfs", "-q", "-f", "-L", "bt-label"}, 256 << 20},
		{"fat12", "vfat", 4 << 20, []string{"mkfs.vfat", "-F", "12", "-n", "F12"}, 4 << 20},
		{"fat16", "vfat", 64 << 20, []string{"mkfs.vfat", "-F", "16", "-n", "F16"}, 64 << 20},
		{"fat32", "vfat", 300 << 20, []string{"mkfs.vfat", "-F", "32", "-n", "F32LABEL"}, 300 << 20},
		{"swap", "swap", 32 << 20, []string{"mkswap", "-L", "swaplabel"}, 32 << 20},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := testenv.NewImage(t, c.size)
			if out, err := exec.Command(c.cmd[0], append(c.cmd[1:], img)...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v: %s", c.cmd, err, out)
			}
			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			info, err := Detect(f, c.size)
			if err != nil {
				t.Fatalf("Detect: %v", err)
			}
			if info.Filesystem != c.fstype || info.Filesystem != blkidValue(t, img, "TYPE") {
				t.Errorf("Filesystem %q, want %q (blkid %q)", info.Filesystem, c.fstype, blkidValue(t, img, "TYPE"))
			}
			if want := blkidValue(t, img, "UUID"); info.UUID != want {
				t.Errorf("UUID %q, blkid says %q", info.UUID, want)
			}
			if want := blkidValue(t, img, "LABEL"); info.Label != want {
				t.Errorf("Label %q, blkid says %q", info.Label, want)
			}
			// mkfs.vfat rounds down to whole tracks; allow that.
			if info.TotalBytes > c.total || info.TotalBytes < c.total-64<<10 || info.BlockSize <= 0 ||
				info.UsedBytes+info.FreeBytes != info.TotalBytes || info.UsedBytes <= 0 {
				t.Errorf("Info %+v, want about %d bytes in total", info, c.total)
			}
			_, es, err := InUse(context.Background(), f, c.size)
			if !errors.Is(err, ErrUnsupported) || es != nil {
				t.Errorf("InUse: %d extents, %v; want ErrUnsupported", len(es), err)
			}
		})
	}
}

// TestDetectOnlyLast checks that a leftover btrfs or swap signature does
// not hide a mappable filesystem: an ext4 with a swap signature at the end
// of its first page (where ext4 keeps nothing on 4 KiB blocks) is ext4.
func TestDetectOnlyLast(t *testing.T) {
	const size = 32 << 20
	img := testenv.NewImage(t, size)
	testenv.MkfsImage(t, img, "ext4", "-b", "4096")
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("SWAPSPACE2"), 4096-10); err != nil {
		t.Fatal(err)
	}
	if info, err := Detect(f, size); err != nil || info.Filesystem != "ext4" {
		t.Errorf("Detect = %+v, %v; want ext4", info, err)
	}
}

// FuzzDetectOnly feeds the btrfs, FAT and swap probes arbitrary first
// sectors and superblocks: no panic, and whatever they report fits the
// device.
func FuzzDetectOnly(f *testing.F) {
	fat := make([]byte, 512)
	copy(fat, []byte{0xEB, 0x3C, 0x90})
	copy(fat[0x0B:], []byte{0, 2, 4, 4, 0, 2, 0, 2, 0, 8, 0xF8, 0xC8, 0}) // 2048 sectors
	copy(fat[0x36:], "FAT16   ")
	fat[510], fat[511] = 0x55, 0xAA
	f.Add(uint8(0), fat)
	btrfs := make([]byte, 256)
	copy(btrfs[0x40:], btrfsMagic)
	btrfs[0x32] = 1 // bytenr 64 KiB
	f.Add(uint8(1), btrfs)
	swap := make([]byte, 64)
	swap[0] = 1
	f.Add(uint8(2), swap)
	f.Fuzz(func(t *testing.T, kind uint8, patch []byte) {
		const size = btrfsSBOffset + btrfsSBSize + 4096 // small, so that each run is cheap
		img := make([]byte, size)
		switch kind % 3 {
		case 0:
			copy(img, patch)
		case 1:
			copy(img[btrfsSBOffset:], patch)
		case 2:
			copy(img[1024:], patch)
			copy(img[4096-10:], "SWAPSPACE2")
		}
		info, err := Detect(bytes.NewReader(img), size)
		if err != nil {
			return
		}
		if info.TotalBytes < 0 || info.TotalBytes > size || info.UsedBytes < 0 || info.UsedBytes > info.TotalBytes || info.BlockSize <= 0 {
			t.Fatalf("Detect = %+v on a %d-byte device", info, size)
		}
	})
}
