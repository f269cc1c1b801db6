package fsparse

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"sort"
)

const (
	extBGBlockUninit = 0x0002 // bg_flags: the block bitmap was never written

	// extReadChunk bounds one read of adjacent bitmap blocks (flex_bg
	// packs the bitmaps of a flex group together).
	extReadChunk = 1 << 20
)

// extDescWindow bounds the descriptor bytes held at once, and so the
// memory the map needs whatever the group count on disk says. A variable
// so that tests can make windows of one descriptor block.
var extDescWindow uint64 = 1 << 20

// extGroup is one decoded group descriptor.
type extGroup struct {
	n                 uint64 // group number
	blockBitmap       uint64
	inodeBitmap       uint64
	inodeTable        uint64
	flags             uint16
	bitmapCsum        uint32 // bg_block_bitmap_csum, with metadata_csum
	computedNotStored bool   // BLOCK_UNINIT honoured: the bitmap is computed
}

// extMapper builds the in-use map of one filesystem.
type extMapper struct {
	s   *extSuper
	r   io.ReaderAt
	out extentList
	// window is the descriptor bytes decoded at once (extDescWindow;
	// tests make it smaller).
	window uint64
	// journalTable is the inode table holding the journal inode.
	journalTable uint64
	// journal maps the journal inode's logical blocks, once walked.
	journal []extRun
}

// extInUse maps an ext2/3/4 filesystem. The map is the union of
//   - every cluster set in the block bitmaps, read once each and in device
//     order within a window of groups;
//   - for groups flagged BLOCK_UNINIT (honoured only with uninit_bg or
//     metadata_csum, like the kernel), what the kernel would compute: the
//     superblock backup, descriptor and reserved descriptor blocks, and the
//     group's bitmaps and inode table;
//   - for every group, those same metadata blocks, wherever flex_bg put
//     them, so that a bitmap that forgot one cannot lose it;
//   - the internal journal's blocks (inode 8), and block 0 before
//     s_first_data_block on 1 KiB-block filesystems (boot code).
//
// A filesystem whose journal needs recovery has bitmaps on disk that lag
// the journal: blocks allocated by committed but unapplied transactions
// look free, and a backup made from them would silently miss their data.
// Its journal is replayed in memory (ext_replay.go) and the map made from
// what recovery would leave; if the journal cannot be replayed, the error
// wraps ErrNeedsRecovery. FIFREEZE checkpoints the journal and clears the
// flag, so a frozen filesystem needs none of this.
func extInUse(ctx context.Context, r io.ReaderAt, size int64) (Info, []Extent, error) {
	return extInUseWindow(ctx, r, size, extDescWindow)
}

func extInUseWindow(ctx context.Context, r io.ReaderAt, size int64, window uint64) (Info, []Extent, error) {
	s, err := readExtSuper(r, size)
	if err != nil {
		return Info{}, nil, err
	}
	info := s.info()
	if s.needsRecovery {
		rr, txns, err := extReplay(ctx, s, r)
		if err != nil {
			return info, nil, fmt.Errorf("%w: %s: the needs_recovery flag is set (mounted and not frozen, or not cleanly unmounted) and the journal cannot be replayed in memory: %v; freeze it or run e2fsck, or fall back to AllBlocks", ErrNeedsRecovery, s.name, err)
		}
		// Map what recovery would leave, from its superblock on.
		r = rr
		if s, err = readExtSuper(r, size); err != nil {
			return info, nil, fmt.Errorf("%w: %s: the superblock after journal replay: %w", ErrNeedsRecovery, info.Filesystem, err)
		}
		s.needsRecovery = false
		info = s.info()
		info.Notes = append(info.Notes, fmt.Sprintf("the journal needed recovery: %d committed transactions replayed in memory (nothing written); on a mounted filesystem that is not frozen the map can still race with the kernel", txns))
	}
	m := &extMapper{s: s, r: r, window: window}
	if err := m.run(ctx); err != nil {
		return info, nil, err
	}
	es := Merge(m.out.es)
	var used int64
	for _, e := range es {
		used += e.Length
	}
	if superUsed := info.UsedBytes; superUsed != used {
		info.Notes = append(info.Notes, fmt.Sprintf("the superblock's free count says %d bytes used, the bitmaps %d (the kernel updates the superblock lazily while mounted)", superUsed, used))
	}
	info.UsedBytes = used
	info.FreeBytes = info.TotalBytes - used
	return info, es, nil
}

func (m *extMapper) run(ctx context.Context) error {
	s := m.s
	if s.firstDataBlock > 0 {
		m.addBlocks(0, s.firstDataBlock)
	}
	perWindow := max(m.window/s.descSize/s.descPerBlock, 1) * s.descPerBlock
	buf := make([]byte, (min(perWindow, s.groups)+s.descPerBlock-1)/s.descPerBlock*uint64(s.blockSize))
	groups := make([]extGroup, 0, min(perWindow, s.groups))
	for first := uint64(0); first < s.groups; first += perWindow {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(perWindow, s.groups-first)
		groups = groups[:0]
		if err := m.readDescriptors(first, n, buf, &groups); err != nil {
			return err
		}
		for i := range groups {
			if err := m.addGroupMetadata(&groups[i]); err != nil {
				return err
			}
			if s.journalInum != 0 && groups[i].n == uint64(s.journalInum-1)/s.inodesPerGroup {
				m.journalTable = groups[i].inodeTable
			}
		}
		if err := m.readBitmaps(ctx, groups); err != nil {
			return err
		}
	}
	return m.addJournal()
}

// descBlock returns the block holding descriptor block i (the descriptors
// of groups i*descPerBlock and on): after the primary superblock, or with
// meta_bg in the first group of meta group i.
func (s *extSuper) descBlock(i uint64) uint64 {
	if s.incompat&extIncompatMetaBG == 0 || i < s.firstMetaBG {
		return extSuperOffset/uint64(s.blockSize) + 1 + i
	}
	g := i * s.descPerBlock
	b := s.groupFirstBlock(g)
	if s.hasSuper(g) {
		b++
	}
	return b
}

func (s *extSuper) groupFirstBlock(g uint64) uint64 {
	b := s.firstDataBlock + g*s.blocksPerGroup
	if b == 0 && s.blockSize == 1024 {
		b = 1 // bigalloc with 1 KiB blocks: the superblock is block 1
	}
	return b
}

// groupEnd returns the block just past group g; the last group is short.
func (s *extSuper) groupEnd(g uint64) uint64 {
	return min(s.firstDataBlock+(g+1)*s.blocksPerGroup, s.blocksCount)
}

// hasSuper reports whether group g holds a superblock (a backup but for
// group 0), as ext2fs_bg_has_super decides it.
func (s *extSuper) hasSuper(g uint64) bool {
	if g == 0 {
		return true
	}
	if s.compat&extCompatSparseSuper2 != 0 {
		return g == s.backupBGs[0] || g == s.backupBGs[1]
	}
	if g <= 1 || s.roCompat&extROCompatSparseSuper == 0 {
		return true
	}
	if g&1 == 0 {
		return false
	}
	return extIsPowerOf(g, 3) || extIsPowerOf(g, 5) || extIsPowerOf(g, 7)
}

func extIsPowerOf(n, base uint64) bool {
	for n%base == 0 {
		n /= base
	}
	return n == 1
}

// readDescriptors decodes the descriptors of groups [first, first+n),
// reading adjacent descriptor blocks together.
func (m *extMapper) readDescriptors(first, n uint64, buf []byte, groups *[]extGroup) error {
	s := m.s
	bs := uint64(s.blockSize)
	firstDB, lastDB := first/s.descPerBlock, (first+n-1)/s.descPerBlock
	for db := firstDB; db <= lastDB; {
		// A run of descriptor blocks stored one after another.
		start := s.descBlock(db)
		run := uint64(1)
		for db+run <= lastDB && s.descBlock(db+run) == start+run {
			run++
		}
		if start+run > s.blocksCount {
			return corrupt(s.name, "descriptor block %d beyond the %d blocks", start+run-1, s.blocksCount)
		}
		p := buf[(db-firstDB)*bs : (db-firstDB+run)*bs]
		if err := extReadFull(m.r, p, int64(start*bs)); err != nil {
			return fmt.Errorf("fsparse: %s: reading group descriptors at block %d: %w", s.name, start, err)
		}
		db += run
	}
	le := binary.LittleEndian
	for i := uint64(0); i < n; i++ {
		d := buf[i*s.descSize : (i+1)*s.descSize]
		g := extGroup{
			n:           first + i,
			blockBitmap: uint64(le.Uint32(d[0x00:])),
			inodeBitmap: uint64(le.Uint32(d[0x04:])),
			inodeTable:  uint64(le.Uint32(d[0x08:])),
			flags:       le.Uint16(d[0x12:]),
		}
		g.bitmapCsum = uint32(le.Uint16(d[0x18:]))
		if s.descSize >= 64 {
			g.blockBitmap |= uint64(le.Uint32(d[0x20:])) << 32
			g.inodeBitmap |= uint64(le.Uint32(d[0x24:])) << 32
			g.inodeTable |= uint64(le.Uint32(d[0x28:])) << 32
			g.bitmapCsum |= uint32(le.Uint16(d[0x38:])) << 16
		}
		if err := s.checkDescCsum(g.n, d); err != nil {
			return err
		}
		if err := s.checkGroup(&g); err != nil {
			return err
		}
		g.computedNotStored = s.groupCsummed && g.flags&extBGBlockUninit != 0
		*groups = append(*groups, g)
	}
	return nil
}

// checkGroup bounds a descriptor's locations by the filesystem.
func (s *extSuper) checkGroup(g *extGroup) error {
	lo, hi := s.firstDataBlock, s.blocksCount
	switch {
	case g.blockBitmap < lo || g.blockBitmap >= hi:
		return corrupt(s.name, "group %d: block bitmap at block %d outside [%d, %d)", g.n, g.blockBitmap, lo, hi)
	case g.inodeBitmap < lo || g.inodeBitmap >= hi:
		return corrupt(s.name, "group %d: inode bitmap at block %d outside [%d, %d)", g.n, g.inodeBitmap, lo, hi)
	case s.inodeTableBlocks > hi || g.inodeTable < lo || g.inodeTable > hi-s.inodeTableBlocks:
		return corrupt(s.name, "group %d: inode table of %d blocks at block %d outside [%d, %d)", g.n, s.inodeTableBlocks, g.inodeTable, lo, hi)
	}
	return nil
}

// addGroupMetadata adds the blocks group g's metadata occupies: its
// superblock backup and descriptor blocks, and its bitmaps and inode
// table wherever they are. The bitmaps already mark them, except in a
// BLOCK_UNINIT group, where this is the computed bitmap.
func (m *extMapper) addGroupMetadata(g *extGroup) error {
	s := m.s
	start := s.groupFirstBlock(g.n)
	end := s.groupEnd(g.n)
	n := uint64(0)
	hasSuper := s.hasSuper(g.n)
	if hasSuper {
		n = 1
	}
	if s.incompat&extIncompatMetaBG == 0 || g.n/s.descPerBlock < s.firstMetaBG {
		if hasSuper {
			n += s.oldDescBlocks()
		}
	} else if r := g.n % s.descPerBlock; r == 0 || r == 1 || r == s.descPerBlock-1 {
		n++
	}
	if n > 0 {
		if start+n > end {
			return corrupt(s.name, "group %d: %d superblock and descriptor blocks overflow the group's %d", g.n, n, end-start)
		}
		m.addBlocks(start, n)
	}
	m.addBlocks(g.blockBitmap, 1)
	m.addBlocks(g.inodeBitmap, 1)
	m.addBlocks(g.inodeTable, s.inodeTableBlocks)
	return nil
}

// readBitmaps reads the stored block bitmaps of groups in device order,
// adjacent ones in one read, and adds the clusters they mark.
func (m *extMapper) readBitmaps(ctx context.Context, groups []extGroup) error {
	s := m.s
	bs := uint64(s.blockSize)
	todo := make([]*extGroup, 0, len(groups))
	for i := range groups {
		if !groups[i].computedNotStored {
			todo = append(todo, &groups[i])
		}
	}
	sort.Slice(todo, func(i, j int) bool { return todo[i].blockBitmap < todo[j].blockBitmap })
	maxRun := uint64(extReadChunk) / bs
	buf := make([]byte, min(uint64(len(todo)), maxRun)*bs)
	for i := 0; i < len(todo); {
		if err := ctx.Err(); err != nil {
			return err
		}
		start := todo[i].blockBitmap
		j := i + 1
		for j < len(todo) && uint64(j-i) < maxRun && todo[j].blockBitmap == start+uint64(j-i) {
			j++
		}
		p := buf[:uint64(j-i)*bs]
		if err := extReadFull(m.r, p, int64(start*bs)); err != nil {
			return fmt.Errorf("fsparse: %s: reading block bitmaps at block %d: %w", s.name, start, err)
		}
		for k := i; k < j; k++ {
			off := uint64(k-i) * bs
			bm := p[off : off+bs]
			if err := s.checkBitmapCsum(todo[k], bm); err != nil {
				return err
			}
			m.addBitmap(todo[k].n, bm)
		}
		i = j
	}
	return nil
}

// extDescCsum is a group descriptor's checksum (ext4_group_desc_csum):
// with metadata_csum, crc32c of the group number and the descriptor with
// its checksum field zeroed, low 16 bits; with uninit_bg, a crc16.
func (s *extSuper) extDescCsum(g uint64, d []byte) uint16 {
	var le32 [4]byte
	binary.LittleEndian.PutUint32(le32[:], uint32(g))
	if !s.metadataCsum {
		// uninit_bg (gdt_csum): crc16 of the UUID, the group number
		// and the descriptor without its checksum; the part past 32
		// bytes only with 64bit.
		c := extCrc16(0xFFFF, s.uuidRaw[:])
		c = extCrc16(c, le32[:])
		c = extCrc16(c, d[:0x1E])
		if s.incompat&extIncompat64Bit != 0 && s.descSize > 0x20 {
			c = extCrc16(c, d[0x20:s.descSize])
		}
		return c
	}
	c := extCrc32c(s.csumSeed, le32[:])
	c = extCrc32c(c, d[:0x1E])
	c = extCrc32c(c, []byte{0, 0})
	c = extCrc32c(c, d[0x20:s.descSize])
	return uint16(c)
}

// checkDescCsum verifies descriptor d of group g (metadata_csum or
// uninit_bg, the features under which BLOCK_UNINIT is honoured): a
// damaged descriptor could point at the wrong bitmap or claim
// BLOCK_UNINIT, and its group's blocks would silently go missing.
func (s *extSuper) checkDescCsum(g uint64, d []byte) error {
	if !s.groupCsummed {
		return nil
	}
	if got, want := binary.LittleEndian.Uint16(d[0x1E:]), s.extDescCsum(g, d); got != want {
		return corrupt(s.name, "group %d: descriptor checksum %#04x, computed %#04x", g, got, want)
	}
	return nil
}

// checkBitmapCsum verifies a block bitmap against its descriptor's
// checksum (metadata_csum): a torn or damaged bitmap must not silently
// drop blocks from a backup. Descriptors of 32 bytes keep only the low
// 16 bits of the checksum.
func (s *extSuper) checkBitmapCsum(g *extGroup, bm []byte) error {
	if !s.metadataCsum {
		return nil
	}
	want := extCrc32c(s.csumSeed, bm[:s.clustersPerGroup/8])
	if s.descSize < 64 {
		want &= 0xFFFF
	}
	if g.bitmapCsum != want {
		return corrupt(s.name, "group %d: block bitmap at block %d has checksum %#x, computed %#x", g.n, g.blockBitmap, g.bitmapCsum, want)
	}
	return nil
}

// addBitmap adds the clusters group g's bitmap marks in use. Bits past the
// end of a short last group are padding and ignored.
func (m *extMapper) addBitmap(g uint64, bm []byte) {
	s := m.s
	first := s.firstDataBlock + g*s.blocksPerGroup
	blocks := s.groupEnd(g) - first
	clusters := (blocks + 1<<s.clusterBits - 1) >> s.clusterBits
	baseCluster := g * s.clustersPerGroup
	extBitRuns(bm, clusters, func(c, n uint64) {
		m.addClusters(baseCluster+c, n)
	})
}

// extBitRuns calls fn(start, length) for each run of set bits among the
// first n bits of bm (bit i is bit i%8 of byte i/8), a word at a time.
func extBitRuns(bm []byte, n uint64, fn func(start, length uint64)) {
	n = min(n, uint64(len(bm))*8)
	var runStart uint64
	inRun := false
	le := binary.LittleEndian
	for i := uint64(0); i < n; {
		var w uint64
		width := uint64(64)
		if i%64 == 0 && i+64 <= n && i/8+8 <= uint64(len(bm)) {
			w = le.Uint64(bm[i/8:])
		} else {
			// The tail, byte by byte.
			width = 8 - i%8
			w = uint64(bm[i/8]) >> (i % 8)
			if i+width > n {
				width = n - i
			}
			w &= 1<<width - 1
		}
		switch {
		case w == 0 && !inRun:
		case w == 1<<width-1 || (width == 64 && w == ^uint64(0)):
			if !inRun {
				runStart, inRun = i, true
			}
		default:
			// Mixed: walk the transitions inside the word.
			for b := uint64(0); b < width; {
				if inRun {
					z := uint64(bits.TrailingZeros64(^w >> b))
					if b+z >= width {
						b = width
						break
					}
					b += z
					fn(runStart, i+b-runStart)
					inRun = false
				} else {
					o := uint64(bits.TrailingZeros64(w >> b))
					if b+o >= width {
						b = width
						break
					}
					b += o
					runStart, inRun = i+b, true
				}
			}
		}
		i += width
	}
	if inRun {
		fn(runStart, n-runStart)
	}
}

// addClusters adds n clusters from cluster c (counted from
// s_first_data_block), clipped to the filesystem's end. c and n are
// bounded by the block count, itself bounded by the device size, so the
// byte arithmetic stays well inside int64.
func (m *extMapper) addClusters(c, n uint64) {
	s := m.s
	m.addBlocks(s.firstDataBlock+c<<s.clusterBits, n<<s.clusterBits)
}

// addBlocks adds n blocks from block b, widened to whole clusters (the
// allocation unit) and clipped to the filesystem's end.
func (m *extMapper) addBlocks(b, n uint64) {
	s := m.s
	if n == 0 || b >= s.blocksCount {
		return
	}
	if s.clusterBits > 0 {
		mask := uint64(1)<<s.clusterBits - 1
		end := (b + n + mask) &^ mask
		b &^= mask
		n = end - b
	}
	end := min(b+n, s.blocksCount)
	m.out.add(int64(b)*s.blockSize, int64(end-b)*s.blockSize)
}

// extentList collects extents, joining each to the previous one when they
// touch, which keeps the list short when input arrives in device order.
type extentList struct{ es []Extent }

func (l *extentList) add(off, length int64) {
	if n := len(l.es); n > 0 {
		last := &l.es[n-1]
		if off >= last.Offset && off <= last.End() {
			if end := off + length; end > last.End() {
				last.Length = end - last.Offset
			}
			return
		}
	}
	l.es = append(l.es, Extent{off, length})
}

// extReadFull reads len(p) bytes at off; an io.EOF that comes with a full
// buffer is not an error, a short read is.
func extReadFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}
