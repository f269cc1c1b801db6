package fsparse

// Filesystems Detect names but InUse does not map: btrfs, FAT and Linux
// swap. Naming them lets a caller say what it found before it falls back
// to AllBlocks; their InUse returns the Info with an error wrapping
// ErrUnsupported. They are probed after the mapped types (see find).
//
// References: the btrfs on-disk format (btrfs-progs kernel-shared/ctree.h,
// struct btrfs_super_block and btrfs_dev_item), Microsoft's FAT
// specification (the BIOS parameter block of the boot sector), and the
// kernel's include/linux/swap.h (union swap_header). Integers are
// little-endian.

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
)

func init() {
	for _, fs := range []struct {
		name   string
		probe  func(io.ReaderAt, int64) bool
		detect func(io.ReaderAt, int64) (Info, error)
	}{
		{"btrfs", btrfsProbe, btrfsDetect},
		{"vfat", fatProbe, fatDetect},
		{"swap", swapProbe, swapDetect},
	} {
		detect := fs.detect
		register(filesystem{
			name: fs.name, probe: fs.probe, detect: detect, detectOnly: true,
			inUse: func(_ context.Context, r io.ReaderAt, size int64) (Info, []Extent, error) {
				info, err := detect(r, size)
				if err != nil {
					return info, nil, err
				}
				return info, nil, fmt.Errorf("%w: %s: in-use blocks are not mapped for this type; fall back to AllBlocks", ErrUnsupported, info.Filesystem)
			},
		})
	}
}

const (
	btrfsSBOffset = 64 << 10
	btrfsSBSize   = 4096
	btrfsMagic    = "_BHRfS_M"
)

// detectOnlyNote says what the counts of a type InUse cannot map mean.
const detectOnlyNote = "in-use blocks cannot be mapped for this type: a backup must copy all of it"

func btrfsProbe(r io.ReaderAt, size int64) bool {
	var b [8]byte
	if size < btrfsSBOffset+btrfsSBSize {
		return false
	}
	if _, err := r.ReadAt(b[:], btrfsSBOffset+0x40); err != nil {
		return false
	}
	return string(b[:]) == btrfsMagic
}

// btrfsDetect reads the primary superblock. The used bytes are those of
// this device's allocated chunks (its dev_item), which is what a copy of
// this device would at least need; the filesystem's own data and metadata
// bytes are in a note.
func btrfsDetect(r io.ReaderAt, size int64) (Info, error) {
	b := make([]byte, btrfsSBSize)
	if err := xrReadFull(r, b, btrfsSBOffset, size, "btrfs", "superblock"); err != nil {
		return Info{}, err
	}
	le := binary.LittleEndian
	if string(b[0x40:0x48]) != btrfsMagic {
		return Info{}, ErrUnknownFilesystem
	}
	// csum_type 0 is crc32c over the rest of the 4 KiB superblock.
	if le.Uint16(b[0xC4:]) == 0 {
		if got, want := le.Uint32(b[0:]), crc32.Checksum(b[0x20:], extCastagnoli); got != want {
			return Info{}, corrupt("btrfs", "superblock checksum %#08x, computed %#08x", got, want)
		}
	}
	sector := int64(le.Uint32(b[0x90:]))
	devTotal, devUsed := le.Uint64(b[0xD1:]), le.Uint64(b[0xD9:])
	fsTotal, fsUsed, devices := le.Uint64(b[0x70:]), le.Uint64(b[0x78:]), le.Uint64(b[0x88:])
	switch {
	case le.Uint64(b[0x30:]) != btrfsSBOffset:
		return Info{}, corrupt("btrfs", "the superblock says it lives at byte %d", le.Uint64(b[0x30:]))
	case !xrIsPow2(uint64(sector)) || sector < 512 || sector > 65536:
		return Info{}, corrupt("btrfs", "sector size %d", sector)
	case devTotal == 0 || devTotal > uint64(size):
		return Info{}, corrupt("btrfs", "this device's part of %d bytes does not fit the %d-byte device", devTotal, size)
	case devUsed > devTotal:
		return Info{}, corrupt("btrfs", "%d bytes allocated of this device's %d", devUsed, devTotal)
	}
	info := Info{
		Filesystem: "btrfs",
		BlockSize:  sector,
		TotalBytes: int64(devTotal),
		UsedBytes:  int64(devUsed),
		FreeBytes:  int64(devTotal - devUsed),
		Label:      strings.TrimRight(string(b[0x12B:0x12B+256]), "\x00"),
		UUID:       xrFormatUUID([16]byte(b[0x20:0x30])),
		Notes: []string{
			detectOnlyNote,
			fmt.Sprintf("used bytes are this device's allocated chunks; the filesystem counts %d of %d bytes used across %d device(s)", fsUsed, fsTotal, devices),
		},
	}
	return info, nil
}

// fatBPB is the BIOS parameter block fields Detect needs.
type fatBPB struct {
	bytesPerSector, reserved, rootEntries uint32
	sectorsPerCluster, fats               uint32
	totalSectors, fatSectors              uint64
	fat32                                 bool
}

// parseFATBPB checks a boot sector the way blkid does before it calls it
// FAT: the jump, a power-of-two sector and cluster size, at least one
// reserved sector and one FAT, a valid media byte and a FAT type string.
func parseFATBPB(b []byte) (fatBPB, bool) {
	le := binary.LittleEndian
	p := fatBPB{
		bytesPerSector:    uint32(le.Uint16(b[0x0B:])),
		sectorsPerCluster: uint32(b[0x0D]),
		reserved:          uint32(le.Uint16(b[0x0E:])),
		fats:              uint32(b[0x10]),
		rootEntries:       uint32(le.Uint16(b[0x11:])),
		totalSectors:      uint64(le.Uint16(b[0x13:])),
		fatSectors:        uint64(le.Uint16(b[0x16:])),
	}
	if p.totalSectors == 0 {
		p.totalSectors = uint64(le.Uint32(b[0x20:]))
	}
	if p.fatSectors == 0 {
		p.fatSectors = uint64(le.Uint32(b[0x24:]))
		p.fat32 = true
	}
	media := b[0x15]
	typeOK := bytes.HasPrefix(b[0x36:], []byte("FAT1")) || bytes.HasPrefix(b[0x36:], []byte("FAT ")) ||
		p.fat32 && bytes.HasPrefix(b[0x52:], []byte("FAT32"))
	ok := (b[0] == 0xEB || b[0] == 0xE9) && b[510] == 0x55 && b[511] == 0xAA &&
		xrIsPow2(uint64(p.bytesPerSector)) && p.bytesPerSector >= 512 && p.bytesPerSector <= 4096 &&
		xrIsPow2(uint64(p.sectorsPerCluster)) && p.reserved > 0 && p.fats > 0 && p.fats <= 4 &&
		(media == 0xF0 || media >= 0xF8) && p.totalSectors > 0 && p.fatSectors > 0 && typeOK
	return p, ok
}

func fatProbe(r io.ReaderAt, size int64) bool {
	b := make([]byte, 512)
	if size < 512 {
		return false
	}
	if _, err := r.ReadAt(b, 0); err != nil {
		return false
	}
	_, ok := parseFATBPB(b)
	return ok
}

func fatDetect(r io.ReaderAt, size int64) (Info, error) {
	b := make([]byte, 512)
	if err := xrReadFull(r, b, 0, size, "vfat", "boot sector"); err != nil {
		return Info{}, err
	}
	p, ok := parseFATBPB(b)
	if !ok {
		return Info{}, ErrUnknownFilesystem
	}
	total := p.totalSectors * uint64(p.bytesPerSector) // both bounded: < 2^32 * 2^12
	meta := uint64(p.reserved) + uint64(p.fats)*p.fatSectors + (uint64(p.rootEntries)*32+uint64(p.bytesPerSector)-1)/uint64(p.bytesPerSector)
	switch {
	case total > uint64(size):
		return Info{}, corrupt("vfat", "%d sectors of %d bytes do not fit the %d-byte device", p.totalSectors, p.bytesPerSector, size)
	case meta >= p.totalSectors:
		return Info{}, corrupt("vfat", "%d sectors of reserved area, FATs and root directory fill the %d sectors", meta, p.totalSectors)
	}
	// The volume ID and label follow the extended BPB, later on FAT32.
	ext := 0x24
	if p.fat32 {
		ext = 0x40
	}
	info := Info{
		Filesystem: "vfat",
		BlockSize:  int64(p.bytesPerSector) * int64(p.sectorsPerCluster),
		TotalBytes: int64(total),
		UsedBytes:  int64(total),
		Notes:      []string{detectOnlyNote + "; used bytes count all of it"},
	}
	if b[ext+2] == 0x29 { // extended boot signature
		id := binary.LittleEndian.Uint32(b[ext+3:])
		info.UUID = fmt.Sprintf("%04X-%04X", id>>16, id&0xFFFF)
		if l := strings.TrimRight(string(b[ext+7:ext+18]), " \x00"); l != "NO NAME" {
			info.Label = l
		}
	}
	return info, nil
}

// swapPageSizes are the page sizes whose swap signature Detect looks for,
// at the end of the first page.
var swapPageSizes = []int64{4096, 8192, 16384, 65536}

// swapPageSize returns the page size whose signature ends the first page,
// or 0, and whether it is the version with a header (SWAPSPACE2).
func swapPageSize(r io.ReaderAt, size int64) (int64, bool) {
	var b [10]byte
	for _, ps := range swapPageSizes {
		if size < ps {
			break
		}
		if _, err := r.ReadAt(b[:], ps-10); err != nil {
			return 0, false
		}
		switch string(b[:]) {
		case "SWAPSPACE2":
			return ps, true
		case "SWAP-SPACE":
			return ps, false
		}
	}
	return 0, false
}

func swapProbe(r io.ReaderAt, size int64) bool {
	ps, _ := swapPageSize(r, size)
	return ps != 0
}

func swapDetect(r io.ReaderAt, size int64) (Info, error) {
	ps, header := swapPageSize(r, size)
	if ps == 0 {
		return Info{}, ErrUnknownFilesystem
	}
	info := Info{Filesystem: "swap", BlockSize: ps, Notes: []string{detectOnlyNote + "; used bytes count all of it"}}
	// The old format (SWAP-SPACE) has no header: the whole device.
	info.TotalBytes = size / ps * ps
	if header {
		b := make([]byte, 1068)
		if err := xrReadFull(r, b, 0, size, "swap", "header"); err != nil {
			return Info{}, err
		}
		le := binary.LittleEndian
		if v := le.Uint32(b[1024:]); v != 1 {
			return Info{}, corrupt("swap", "header version %d", v)
		}
		lastPage := uint64(le.Uint32(b[1028:]))
		if (lastPage+1)*uint64(ps) > uint64(size) {
			return Info{}, corrupt("swap", "%d pages of %d bytes do not fit the %d-byte device", lastPage+1, ps, size)
		}
		info.TotalBytes = int64(lastPage+1) * ps
		info.UUID = xrFormatUUID([16]byte(b[1036:1052]))
		info.Label = strings.TrimRight(string(b[1052:1068]), "\x00")
	}
	info.UsedBytes = info.TotalBytes
	return info, nil
}
