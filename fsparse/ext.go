package fsparse

// ext2, ext3 and ext4 share one on-disk format, described in the kernel's
// Documentation/filesystems/ext4/ (https://docs.kernel.org/filesystems/ext4/)
// and implemented by e2fsprogs' lib/ext2fs. This file reads and validates
// the superblock; ext_map.go builds the in-use map from the group
// descriptors and block bitmaps; ext_journal.go walks the journal inode;
// ext_replay.go replays a journal that needs recovery, in memory.

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"
	"strings"
)

const (
	extSuperOffset = 1024
	extSuperSize   = 1024
	extMagic       = 0xEF53

	// s_feature_compat
	extCompatHasJournal   = 0x0004
	extCompatResizeInode  = 0x0010
	extCompatSparseSuper2 = 0x0200

	// s_feature_incompat
	extIncompatFiletype   = 0x0002
	extIncompatRecover    = 0x0004
	extIncompatJournalDev = 0x0008
	extIncompatMetaBG     = 0x0010
	extIncompat64Bit      = 0x0080
	extIncompatFlexBG     = 0x0200
	extIncompatCsumSeed   = 0x2000

	// s_feature_ro_compat
	extROCompatSparseSuper  = 0x0001
	extROCompatLargeFile    = 0x0002
	extROCompatBtreeDir     = 0x0004
	extROCompatGDTCsum      = 0x0010
	extROCompatBigalloc     = 0x0200
	extROCompatMetadataCsum = 0x0400

	// The features an ext2 or ext3 filesystem may have; anything else
	// makes it ext4, the rule blkid applies.
	ext3IncompatSupp = extIncompatFiletype | extIncompatRecover | extIncompatMetaBG
	ext2IncompatSupp = extIncompatFiletype | extIncompatMetaBG
	ext3ROCompatSupp = extROCompatSparseSuper | extROCompatLargeFile | extROCompatBtreeDir

	extMinDescSize = 32
	extMaxDescSize = 1024
)

func init() {
	register(filesystem{name: "ext", probe: extProbe, detect: extDetect, inUse: extInUse})
}

// extSuper holds the superblock fields the map needs, validated against
// each other and against the device size by parseExtSuper.
type extSuper struct {
	name                        string // ext2, ext3 or ext4
	blocksCount, freeBlocks     uint64
	firstDataBlock              uint64
	blockSize                   int64
	clusterBits                 uint // log2(blocks per cluster)
	blocksPerGroup              uint64
	clustersPerGroup            uint64
	inodesPerGroup, inodeSize   uint64
	compat, incompat, roCompat  uint32
	descSize                    uint64
	reservedGDT                 uint64
	firstMetaBG                 uint64
	backupBGs                   [2]uint64
	journalInum                 uint32
	groups                      uint64
	descPerBlock                uint64
	descBlocks                  uint64 // blocks of the whole descriptor table
	inodeTableBlocks            uint64 // per group
	state                       uint16
	label, uuid                 string
	needsRecovery, groupCsummed bool
	// With metadata_csum: the seed of every checksum but the
	// superblock's, in the kernel's raw crc32c form.
	metadataCsum bool
	csumSeed     uint32
	uuidRaw      [16]byte
}

func (s *extSuper) has(compat, incompat, roCompat uint32) bool {
	return s.compat&compat != 0 || s.incompat&incompat != 0 || s.roCompat&roCompat != 0
}

// clusterSize is the allocation unit in bytes.
func (s *extSuper) clusterSize() int64 { return s.blockSize << s.clusterBits }

// totalBytes is the size the filesystem covers.
func (s *extSuper) totalBytes() int64 { return int64(s.blocksCount) * s.blockSize }

func extProbe(r io.ReaderAt, size int64) bool {
	if size < extSuperOffset+extSuperSize {
		return false
	}
	var b [2]byte
	if _, err := r.ReadAt(b[:], extSuperOffset+0x38); err != nil {
		return false
	}
	return binary.LittleEndian.Uint16(b[:]) == extMagic
}

func readExtSuper(r io.ReaderAt, size int64) (*extSuper, error) {
	if size < extSuperOffset+extSuperSize {
		return nil, ErrUnknownFilesystem
	}
	b := make([]byte, extSuperSize)
	if err := extReadFull(r, b, extSuperOffset); err != nil {
		return nil, fmt.Errorf("fsparse: ext: reading the superblock: %w", err)
	}
	return parseExtSuper(b, size)
}

// parseExtSuper decodes and checks the 1024-byte superblock of a device
// of size bytes. Every number later used as a count, an offset or a length
// is bounded here, so that the map can trust them.
func parseExtSuper(b []byte, size int64) (*extSuper, error) {
	le := binary.LittleEndian
	u16 := func(off int) uint64 { return uint64(le.Uint16(b[off:])) }
	u32 := func(off int) uint64 { return uint64(le.Uint32(b[off:])) }
	if len(b) < extSuperSize || u16(0x38) != extMagic {
		return nil, ErrUnknownFilesystem
	}
	s := &extSuper{
		compat:   le.Uint32(b[0x5C:]),
		incompat: le.Uint32(b[0x60:]),
		roCompat: le.Uint32(b[0x64:]),
		state:    le.Uint16(b[0x3A:]),
	}
	if s.incompat&extIncompatJournalDev != 0 {
		return nil, fmt.Errorf("%w: ext: this is an external journal device, not a filesystem", ErrUnsupported)
	}
	switch {
	case s.compat&extCompatHasJournal != 0 && s.incompat&^ext3IncompatSupp == 0 && s.roCompat&^ext3ROCompatSupp == 0:
		s.name = "ext3"
	case s.compat&extCompatHasJournal == 0 && s.incompat&^ext2IncompatSupp == 0 && s.roCompat&^ext3ROCompatSupp == 0:
		s.name = "ext2"
	default:
		s.name = "ext4"
	}
	fs := s.name
	is64 := s.incompat&extIncompat64Bit != 0

	logBlock := u32(0x18)
	if logBlock > 6 { // 64 KiB, the largest block size
		return nil, corrupt(fs, "block size 2^(10+%d) out of range", logBlock)
	}
	s.blockSize = 1024 << logBlock
	s.blocksCount = u32(0x04)
	s.freeBlocks = u32(0x0C)
	if is64 {
		s.blocksCount |= u32(0x150) << 32
		s.freeBlocks |= u32(0x158) << 32
	}
	if s.blocksCount == 0 || s.blocksCount > uint64(size/s.blockSize) {
		return nil, corrupt(fs, "%d blocks of %d bytes do not fit the %d-byte device", s.blocksCount, s.blockSize, size)
	}
	s.firstDataBlock = u32(0x14)
	if s.firstDataBlock > 1 || s.firstDataBlock >= s.blocksCount {
		return nil, corrupt(fs, "first data block %d", s.firstDataBlock)
	}

	s.blocksPerGroup = u32(0x20)
	s.clustersPerGroup = u32(0x24)
	if s.roCompat&extROCompatBigalloc != 0 {
		logCluster := u32(0x1C)
		// The kernel caps clusters at 2^30 bytes (EXT4_MAX_CLUSTER_LOG_SIZE).
		if logCluster < logBlock || logCluster > 20 {
			return nil, corrupt(fs, "cluster size 2^(10+%d) with block size 2^(10+%d)", logCluster, logBlock)
		}
		s.clusterBits = uint(logCluster - logBlock)
	} else if s.clustersPerGroup != s.blocksPerGroup {
		// Once s_frags_per_group, always equal without bigalloc; the
		// kernel refuses to mount otherwise.
		return nil, corrupt(fs, "%d blocks per group but %d clusters per group without bigalloc", s.blocksPerGroup, s.clustersPerGroup)
	}
	bitsPerBlock := uint64(s.blockSize) * 8
	if s.clustersPerGroup < 8 || s.clustersPerGroup > bitsPerBlock || s.clustersPerGroup%8 != 0 {
		return nil, corrupt(fs, "%d clusters per group (the bitmap holds %d)", s.clustersPerGroup, bitsPerBlock)
	}
	// Both factors are bounded (2^19 * 2^20), so the product cannot overflow.
	if s.blocksPerGroup != s.clustersPerGroup<<s.clusterBits {
		return nil, corrupt(fs, "%d blocks per group is not %d clusters of %d blocks", s.blocksPerGroup, s.clustersPerGroup, 1<<s.clusterBits)
	}
	s.groups = (s.blocksCount - s.firstDataBlock + s.blocksPerGroup - 1) / s.blocksPerGroup

	s.descSize = extMinDescSize
	if is64 {
		s.descSize = u16(0xFE)
		if s.descSize < 64 || s.descSize > extMaxDescSize || bits.OnesCount64(s.descSize) != 1 {
			return nil, corrupt(fs, "group descriptor size %d", s.descSize)
		}
	}
	s.descPerBlock = uint64(s.blockSize) / s.descSize
	s.descBlocks = (s.groups + s.descPerBlock - 1) / s.descPerBlock

	s.inodesPerGroup = u32(0x28)
	s.inodeSize = 128
	if u32(0x4C) >= 1 { // dynamic revision
		s.inodeSize = u16(0x58)
	}
	if s.inodeSize < 128 || s.inodeSize > uint64(s.blockSize) || bits.OnesCount64(s.inodeSize) != 1 {
		return nil, corrupt(fs, "inode size %d", s.inodeSize)
	}
	if s.inodesPerGroup == 0 || s.inodesPerGroup > bitsPerBlock {
		return nil, corrupt(fs, "%d inodes per group", s.inodesPerGroup)
	}
	// s_inodes_count is 32 bits: the product must fit it, and computing
	// it with the high word catches overflow on absurd device sizes.
	if hi, lo := bits.Mul64(s.inodesPerGroup, s.groups); hi != 0 || lo != u32(0x00) {
		return nil, corrupt(fs, "%d inodes is not %d groups of %d", u32(0x00), s.groups, s.inodesPerGroup)
	}
	s.inodeTableBlocks = (s.inodesPerGroup*s.inodeSize + uint64(s.blockSize) - 1) / uint64(s.blockSize)

	s.reservedGDT = u16(0xCE)
	if s.reservedGDT > uint64(s.blockSize)/4 {
		return nil, corrupt(fs, "%d reserved GDT blocks", s.reservedGDT)
	}
	if s.incompat&extIncompatMetaBG != 0 {
		s.firstMetaBG = u32(0x104)
		if s.firstMetaBG > s.descBlocks {
			return nil, corrupt(fs, "first meta_bg %d beyond the %d descriptor blocks", s.firstMetaBG, s.descBlocks)
		}
	}
	if s.compat&extCompatSparseSuper2 != 0 {
		s.backupBGs = [2]uint64{u32(0x24C), u32(0x250)}
	}
	// Group 0 holds the superblock and the (old-style) descriptor table;
	// it must fit the device before anything reads it.
	if meta := s.firstDataBlock + 1 + s.oldDescBlocks(); meta > s.blocksCount {
		return nil, corrupt(fs, "the descriptor table (%d blocks) does not fit %d blocks", meta, s.blocksCount)
	}
	if s.compat&extCompatHasJournal != 0 {
		s.journalInum = le.Uint32(b[0xE0:])
		if inodes := u32(0x00); uint64(s.journalInum) > inodes {
			return nil, corrupt(fs, "journal inode %d beyond the %d inodes", s.journalInum, inodes)
		}
		s.needsRecovery = s.incompat&extIncompatRecover != 0
	}
	s.groupCsummed = s.roCompat&(extROCompatGDTCsum|extROCompatMetadataCsum) != 0
	if s.roCompat&extROCompatMetadataCsum != 0 {
		s.metadataCsum = true
		if got, want := le.Uint32(b[0x3FC:]), extCrc32c(^uint32(0), b[:0x3FC]); got != want {
			return nil, corrupt(fs, "superblock checksum %#08x, computed %#08x", got, want)
		}
		if s.incompat&extIncompatCsumSeed != 0 {
			s.csumSeed = le.Uint32(b[0x270:])
		} else {
			s.csumSeed = extCrc32c(^uint32(0), b[0x68:0x78])
		}
	}
	s.label = strings.TrimRight(string(b[0x78:0x88]), "\x00")
	s.uuid = extFormatUUID(b[0x68:0x78])
	copy(s.uuidRaw[:], b[0x68:0x78])
	return s, nil
}

// oldDescBlocks is how many blocks follow the superblock (and each of its
// backups) for the descriptor table: with meta_bg only the first
// s_first_meta_bg blocks, otherwise the whole table plus the blocks
// reserved for online growth (ext2fs_super_and_bgd_loc2).
func (s *extSuper) oldDescBlocks() uint64 {
	if s.incompat&extIncompatMetaBG != 0 {
		return s.firstMetaBG
	}
	return s.descBlocks + s.reservedGDT
}

func extFormatUUID(b []byte) string {
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// info is what the superblock alone says; extInUse replaces the used and
// free counts with those of the bitmaps.
func (s *extSuper) info() Info {
	total := s.totalBytes()
	free := min(int64(s.freeBlocks), int64(s.blocksCount)) * s.blockSize
	info := Info{
		Filesystem: s.name,
		BlockSize:  s.clusterSize(),
		TotalBytes: total,
		UsedBytes:  total - free,
		FreeBytes:  free,
		Label:      s.label,
		UUID:       s.uuid,
	}
	if s.needsRecovery {
		info.Notes = append(info.Notes, "the journal needs recovery: mounted and not frozen, or not cleanly unmounted; the bitmaps on disk may be stale")
	}
	if s.compat&extCompatHasJournal != 0 && s.journalInum == 0 {
		info.Notes = append(info.Notes, "the journal is external, on another device; it is not in this map")
	}
	if s.state&0x0001 == 0 && s.compat&extCompatHasJournal == 0 { // EXT2_VALID_FS
		info.Notes = append(info.Notes, "not marked clean (mounted, or not cleanly unmounted) and without a journal: unless it is frozen or read-only, the bitmaps may be inconsistent; run e2fsck -n to check")
	}
	if s.state&0x0002 != 0 { // EXT2_ERROR_FS
		info.Notes = append(info.Notes, "the filesystem is marked as having errors; run e2fsck")
	}
	if s.roCompat&extROCompatBigalloc != 0 {
		info.Notes = append(info.Notes, fmt.Sprintf("bigalloc: allocation unit is a %d-byte cluster of %d-byte blocks", s.clusterSize(), s.blockSize))
	}
	return info
}

func extDetect(r io.ReaderAt, size int64) (Info, error) {
	s, err := readExtSuper(r, size)
	if err != nil {
		return Info{}, err
	}
	return s.info(), nil
}

var extCastagnoli = crc32.MakeTable(crc32.Castagnoli)

// extCrc32c is the kernel's crc32c(seed, p): CRC-32C without the initial
// and final inversions Go's crc32 applies.
func extCrc32c(seed uint32, p []byte) uint32 {
	return ^crc32.Update(^seed, extCastagnoli, p)
}

// extCrc16Table is the kernel's lib/crc16.c table: CRC-16 with polynomial
// 0x8005, bit-reversed (0xA001).
var extCrc16Table = func() (t [256]uint16) {
	for i := range t {
		c := uint16(i)
		for k := 0; k < 8; k++ {
			if c&1 != 0 {
				c = c>>1 ^ 0xA001
			} else {
				c >>= 1
			}
		}
		t[i] = c
	}
	return t
}()

// extCrc16 is the kernel's crc16(crc, p).
func extCrc16(crc uint16, p []byte) uint16 {
	for _, b := range p {
		crc = crc>>8 ^ extCrc16Table[byte(crc)^b]
	}
	return crc
}
