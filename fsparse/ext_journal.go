package fsparse

import (
	"encoding/binary"
	"fmt"
)

const (
	extInodeExtentsFlag = 0x80000 // i_flags: i_block holds an extent tree
	extExtentMagic      = 0xF30A
	extMaxExtentDepth   = 5
	// extMaxJournalNodes bounds the tree or indirect blocks read while
	// walking the journal inode, whatever the inode claims.
	extMaxJournalNodes = 1 << 16
)

// addJournal adds the blocks of the internal journal, the inode named by
// s_journal_inum (8 as mkfs makes it). They are allocated in the bitmaps
// already; walking the inode checks that, cheaply, since mkfs writes the
// journal as one or a few extents, and keeps the journal in the map even
// if a bitmap lost it. An external journal lives on another device: a
// note says so.
func (m *extMapper) addJournal() error {
	s := m.s
	if s.compat&extCompatHasJournal == 0 {
		return nil
	}
	if s.journalInum == 0 {
		return nil // external journal, noted by info
	}
	idx := uint64(s.journalInum-1) % s.inodesPerGroup
	off := m.journalTable*uint64(s.blockSize) + idx*s.inodeSize
	inode := make([]byte, 128)
	if err := extReadFull(m.r, inode, int64(off)); err != nil {
		return fmt.Errorf("fsparse: %s: reading the journal inode: %w", s.name, err)
	}
	le := binary.LittleEndian
	if le.Uint16(inode[0:])&0xF000 != 0x8000 {
		return corrupt(s.name, "journal inode %d is not a regular file (mode %#o)", s.journalInum, le.Uint16(inode[0:]))
	}
	w := &extBlockWalk{m: m, budget: extMaxJournalNodes}
	iblock := inode[0x28 : 0x28+60]
	if le.Uint32(inode[0x20:])&extInodeExtentsFlag != 0 {
		if err := w.extents(iblock, -1); err != nil {
			return err
		}
	} else {
		for i := 0; i < 12; i++ {
			if err := w.data(uint64(i), uint64(le.Uint32(iblock[4*i:])), 1); err != nil {
				return err
			}
		}
		apb := uint64(s.blockSize / 4)
		base, span := uint64(12), uint64(1)
		for level := 1; level <= 3; level++ {
			span *= apb
			if err := w.indirect(uint64(le.Uint32(iblock[4*(11+level):])), level, base); err != nil {
				return err
			}
			base += span
		}
	}
	m.journal = w.runs
	return nil
}

// An extRun maps n logical blocks of a file from logical to physical.
type extRun struct{ logical, physical, n uint64 }

// extBlockWalk adds the blocks of one inode, its mapping blocks included.
type extBlockWalk struct {
	m      *extMapper
	budget int    // tree blocks still allowed
	mapped uint64 // data blocks so far; more than the filesystem has is corrupt
	runs   []extRun
}

// data adds n data blocks from physical block b, logical block logical.
func (w *extBlockWalk) data(logical, b, n uint64) error {
	if b == 0 || n == 0 {
		return nil
	}
	if err := w.add(b, n); err != nil {
		return err
	}
	if k := len(w.runs); k > 0 && w.runs[k-1].logical+w.runs[k-1].n == logical && w.runs[k-1].physical+w.runs[k-1].n == b {
		w.runs[k-1].n += n
	} else {
		w.runs = append(w.runs, extRun{logical, b, n})
	}
	return nil
}

// add puts n blocks from b in the map, after checking them.
func (w *extBlockWalk) add(b, n uint64) error {
	s := w.m.s
	if b >= s.blocksCount || n > s.blocksCount-b {
		return corrupt(s.name, "journal blocks [%d, +%d) beyond the %d blocks", b, n, s.blocksCount)
	}
	if w.mapped += n; w.mapped > s.blocksCount {
		return corrupt(s.name, "the journal inode maps more blocks than the filesystem has")
	}
	w.m.addBlocks(b, n)
	return nil
}

// node reads mapping block b, counting it against the budget.
func (w *extBlockWalk) node(b uint64) ([]byte, error) {
	s := w.m.s
	if w.budget--; w.budget < 0 {
		return nil, corrupt(s.name, "the journal inode maps more than %d tree blocks", extMaxJournalNodes)
	}
	if b == 0 {
		return nil, corrupt(s.name, "journal inode: a mapping block is block 0")
	}
	if err := w.add(b, 1); err != nil {
		return nil, err
	}
	p := make([]byte, s.blockSize)
	if err := extReadFull(w.m.r, p, int64(b)*s.blockSize); err != nil {
		return nil, fmt.Errorf("fsparse: %s: reading journal block %d: %w", s.name, b, err)
	}
	return p, nil
}

// extents walks an extent tree node; want is the depth its parent
// expects, or -1 at the root.
func (w *extBlockWalk) extents(p []byte, want int) error {
	s := w.m.s
	le := binary.LittleEndian
	if len(p) < 12 || le.Uint16(p[0:]) != extExtentMagic {
		return corrupt(s.name, "journal inode: bad extent header")
	}
	entries, depth := int(le.Uint16(p[2:])), int(le.Uint16(p[6:]))
	if entries > (len(p)-12)/12 || depth > extMaxExtentDepth || (want >= 0 && depth != want) {
		return corrupt(s.name, "journal inode: extent node of %d entries at depth %d", entries, depth)
	}
	for i := 0; i < entries; i++ {
		e := p[12+12*i : 24+12*i]
		if depth == 0 {
			n := uint64(le.Uint16(e[4:]))
			if n > 32768 {
				n -= 32768 // unwritten extent, still allocated
			}
			start := uint64(le.Uint16(e[6:]))<<32 | uint64(le.Uint32(e[8:]))
			if err := w.data(uint64(le.Uint32(e[0:])), start, n); err != nil {
				return err
			}
			continue
		}
		child, err := w.node(uint64(le.Uint16(e[8:]))<<32 | uint64(le.Uint32(e[4:])))
		if err != nil {
			return err
		}
		if err := w.extents(child, depth-1); err != nil {
			return err
		}
	}
	return nil
}

// indirect walks an ext2/3 indirect block of the given level (1: it lists
// data blocks) whose first entry maps logical block base.
func (w *extBlockWalk) indirect(b uint64, level int, base uint64) error {
	if b == 0 {
		return nil
	}
	p, err := w.node(b)
	if err != nil {
		return err
	}
	le := binary.LittleEndian
	apb := uint64(len(p) / 4)
	span := uint64(1)
	for i := 1; i < level; i++ {
		span *= apb
	}
	for i := uint64(0); i < apb; i++ {
		c := uint64(le.Uint32(p[4*i:]))
		if level == 1 {
			err = w.data(base+i, c, 1)
		} else {
			err = w.indirect(c, level-1, base+i*span)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
