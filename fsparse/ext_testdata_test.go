package fsparse

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
)

// The images in testdata are 4 MiB filesystems of 1 KiB blocks made by
// mke2fs 1.47.0, mounted, given a few files, one of them deleted, and
// unmounted; the wanted figures are dumpe2fs's.
var extTestdata = []struct {
	file, fstype, label, uuid string
	usedBlocks                int64 // Block count - Free blocks, dumpe2fs -h
	blockSize                 int64
}{
	// mkfs.ext4 -b 1024 -g 512 -N 128 -J size=1 -O ^resize_inode: eight
	// groups, flex_bg, one BLOCK_UNINIT group, a journal in two extents
	// around group 3's superblock backup.
	{"ext4-1k-flexbg.img.gz", "ext4", "fuzzseed", "5e6d3a4b-1c2d-4e5f-8a9b-0c1d2e3f4a5b", 4096 - 1854, 1024},
	// mkfs.ext3 -b 1024 -g 1024 -N 64 -J size=1: four groups, no flex_bg,
	// a journal mapped by indirect and double-indirect blocks.
	{"ext3-1k.img.gz", "ext3", "ext3seed", "11111111-2222-4333-8444-555555555555", 4096 - 2296, 1024},
	// mkfs.ext4 -b 1024 -O bigalloc -C 4096 -N 64 -J size=1: 4 KiB clusters
	// of 1 KiB blocks, s_first_data_block 0.
	{"ext4-1k-bigalloc.img.gz", "ext4", "bigseed", "66666666-2222-4333-8444-555555555555", 4096 - 2736, 4096},
}

var extImageCache sync.Map

// extImage returns the decompressed testdata image; callers get a copy
// they may change.
func extImage(t testing.TB, name string) []byte {
	t.Helper()
	if b, ok := extImageCache.Load(name); ok {
		return bytes.Clone(b.([]byte))
	}
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	extImageCache.Store(name, b)
	return bytes.Clone(b)
}

func TestExtTestdata(t *testing.T) {
	for _, tc := range extTestdata {
		t.Run(tc.file, func(t *testing.T) {
			img := extImage(t, tc.file)
			r := bytes.NewReader(img)
			d, err := Detect(r, int64(len(img)))
			if err != nil {
				t.Fatal(err)
			}
			if d.Filesystem != tc.fstype || d.Label != tc.label || d.UUID != tc.uuid || d.BlockSize != tc.blockSize || d.TotalBytes != 4<<20 {
				t.Errorf("Detect = %+v", d)
			}
			if d.UsedBytes != tc.usedBlocks*1024 {
				t.Errorf("Detect's UsedBytes (superblock) = %d, want %d", d.UsedBytes, tc.usedBlocks*1024)
			}
			info, es, err := InUse(context.Background(), r, int64(len(img)))
			if err != nil {
				t.Fatal(err)
			}
			extCheckExtents(t, es, info.TotalBytes)
			if info.UsedBytes != tc.usedBlocks*1024 || info.FreeBytes != info.TotalBytes-info.UsedBytes {
				t.Errorf("InUse: used %d free %d, want used %d", info.UsedBytes, info.FreeBytes, tc.usedBlocks*1024)
			}
		})
	}
}

// recordingReader logs every read.
type recordingReader struct {
	r     io.ReaderAt
	mu    sync.Mutex
	reads []Extent
}

func (rr *recordingReader) ReadAt(p []byte, off int64) (int, error) {
	rr.mu.Lock()
	rr.reads = append(rr.reads, Extent{off, int64(len(p))})
	rr.mu.Unlock()
	return rr.r.ReadAt(p, off)
}

// TestExtReadsMetadataOnce checks the promise made for frozen
// filesystems: no byte is read twice, bitmaps are read in device order,
// and BLOCK_UNINIT groups' bitmaps are not read at all.
func TestExtReadsMetadataOnce(t *testing.T) {
	for _, tc := range extTestdata {
		t.Run(tc.file, func(t *testing.T) {
			img := extImage(t, tc.file)
			// extInUse directly: InUse's probes read a few bytes too.
			rr := &recordingReader{r: bytes.NewReader(img)}
			if _, _, err := extInUse(context.Background(), rr, int64(len(img))); err != nil {
				t.Fatal(err)
			}
			var total int64
			for _, e := range rr.reads {
				total += e.Length
			}
			info, _, err := InUse(context.Background(), bytes.NewReader(img), int64(len(img)))
			if err != nil {
				t.Fatal(err)
			}
			if total != info.MetadataBytesRead {
				t.Errorf("MetadataBytesRead = %d, the reader saw %d", info.MetadataBytesRead, total)
			}
			sorted := append([]Extent(nil), rr.reads...)
			sort.Slice(sorted, func(i, j int) bool { return sorted[i].Offset < sorted[j].Offset })
			for i := 1; i < len(sorted); i++ {
				if sorted[i].Offset < sorted[i-1].End() {
					t.Errorf("read %+v overlaps read %+v", sorted[i], sorted[i-1])
				}
			}
			s, err := parseExtSuper(img[1024:2048], int64(len(img)))
			if err != nil {
				t.Fatal(err)
			}
			m := &extMapper{s: s, r: bytes.NewReader(img)}
			buf := make([]byte, (s.descBlocks)*uint64(s.blockSize))
			var groups []extGroup
			if err := m.readDescriptors(0, s.groups, buf, &groups); err != nil {
				t.Fatal(err)
			}
			bitmapRead := map[int]bool{} // index in rr.reads
			for _, g := range groups {
				off := int64(g.blockBitmap) * s.blockSize
				read := false
				for i, e := range rr.reads {
					if e.Offset <= off && off < e.End() {
						read = true
						bitmapRead[i] = true
					}
				}
				if read == g.computedNotStored {
					t.Errorf("group %d (flags %#x): bitmap read = %v", g.n, g.flags, read)
				}
			}
			var last int64 = -1
			for i, e := range rr.reads {
				if bitmapRead[i] {
					if e.Offset < last {
						t.Errorf("bitmaps not read in device order: %v", rr.reads)
					}
					last = e.Offset
				}
			}
		})
	}
}

// TestExtCorrupt damages one field at a time: each must give an error
// wrapping ErrCorrupt (or ErrUnknownFilesystem for a lost magic).
func TestExtCorrupt(t *testing.T) {
	put32 := func(off int, v uint32) func([]byte) {
		return func(b []byte) { binary.LittleEndian.PutUint32(b[off:], v) }
	}
	put16 := func(off int, v uint16) func([]byte) {
		return func(b []byte) { binary.LittleEndian.PutUint16(b[off:], v) }
	}
	sb := 1024
	gd := 2048 // the first group descriptor (1 KiB blocks)
	// fixDesc damages a descriptor field and recomputes the descriptor's
	// checksum, so that the field's own check is reached.
	fixDesc := func(damage func([]byte)) func([]byte) {
		return func(b []byte) { damage(b); extFixDescCsum(b, 0) }
	}
	cases := []struct {
		name     string
		damage   func([]byte)
		size     int64 // 0: the image's
		want     error
		keepCsum bool // leave the superblock checksum as damaged
	}{
		{"superblock checksum", put32(sb+0x3FC, 0x12345678), 0, ErrCorrupt, true},
		{"superblock field under its checksum", put32(sb+0x10, 99), 0, ErrCorrupt, true},
		{"block bitmap bit flipped", func(b []byte) {
			bb := int(binary.LittleEndian.Uint32(b[gd:]))
			b[bb*1024+10] ^= 0x10
		}, 0, ErrCorrupt, false},
		{"block bitmap checksum", func(b []byte) {
			binary.LittleEndian.PutUint16(b[gd+0x18:], 0xBEEF)
			extFixDescCsum(b, 0)
		}, 0, ErrCorrupt, false},
		{"descriptor checksum", put16(gd+0x1E, 0xBEEF), 0, ErrCorrupt, false},
		{"BLOCK_UNINIT set under the descriptor checksum", func(b []byte) {
			b[gd+0x12] |= extBGBlockUninit
		}, 0, ErrCorrupt, false},
		{"magic", put16(sb+0x38, 0x1234), 0, ErrUnknownFilesystem, false},
		{"blocks beyond device", put32(sb+0x04, 4097), 0, ErrCorrupt, false},
		{"device truncated", nil, 3 << 20, ErrCorrupt, false},
		{"log block size", put32(sb+0x18, 7), 0, ErrCorrupt, false},
		{"first data block", put32(sb+0x14, 2), 0, ErrCorrupt, false},
		{"blocks per group 0", put32(sb+0x20, 0), 0, ErrCorrupt, false},
		{"clusters per group beyond bitmap", put32(sb+0x24, 1<<20), 0, ErrCorrupt, false},
		{"desc size 48", put16(sb+0xFE, 48), 0, ErrCorrupt, false},
		{"desc size 2048", put16(sb+0xFE, 2048), 0, ErrCorrupt, false},
		{"inode size 0", put16(sb+0x58, 0), 0, ErrCorrupt, false},
		{"inodes count", put32(sb+0x00, 12345), 0, ErrCorrupt, false},
		{"reserved gdt", put16(sb+0xCE, 0xFFFF), 0, ErrCorrupt, false},
		{"journal inode", put32(sb+0xE0, 1<<30), 0, ErrCorrupt, false},
		{"block bitmap beyond end", fixDesc(put32(gd+0x00, 5000)), 0, ErrCorrupt, false},
		{"inode bitmap beyond end", fixDesc(put32(gd+0x04, 0xFFFFFFF0)), 0, ErrCorrupt, false},
		{"inode table beyond end", fixDesc(put32(gd+0x08, 4090)), 0, ErrCorrupt, false},
		{"block bitmap high half", fixDesc(put32(gd+0x20, 1)), 0, ErrCorrupt, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			img := extImage(t, "ext4-1k-flexbg.img.gz")
			if tc.damage != nil {
				tc.damage(img)
			}
			if !tc.keepCsum {
				// Reach the check behind the superblock checksum.
				extFixSuperCsum(img[1024:2048])
			}
			size := int64(len(img))
			if tc.size != 0 {
				size = tc.size
			}
			_, _, err := InUse(context.Background(), bytes.NewReader(img[:size]), size)
			if !errors.Is(err, tc.want) {
				t.Fatalf("InUse: err = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestExtBigallocArithmetic maps clusters at the far end of the largest
// filesystem ext4 allows (2^64 bytes is beyond int64; 2^48 blocks of
// 1 KiB with 2^16-block clusters is not) and compares with big.Int.
func TestExtBigallocArithmetic(t *testing.T) {
	s := &extSuper{
		name:           "ext4",
		blocksCount:    1<<48 - 3, // the last cluster is partial
		blockSize:      1024,
		clusterBits:    16,
		blocksPerGroup: 1 << 29,
	}
	m := &extMapper{s: s}
	lastCluster := (s.blocksCount - 1) >> s.clusterBits
	m.addClusters(lastCluster-1, 2)
	if len(m.out.es) != 1 {
		t.Fatalf("extents = %v", m.out.es)
	}
	e := m.out.es[0]
	want := new(big.Int).Mul(big.NewInt(int64(lastCluster-1)), big.NewInt(1<<16*1024))
	if big.NewInt(e.Offset).Cmp(want) != 0 {
		t.Errorf("offset = %d, want %v", e.Offset, want)
	}
	wantEnd := new(big.Int).Mul(new(big.Int).SetUint64(s.blocksCount), big.NewInt(1024))
	if big.NewInt(e.End()).Cmp(wantEnd) != 0 {
		t.Errorf("end = %d, want the filesystem's end %v", e.End(), wantEnd)
	}
}

// TestExtBitRuns compares the word-at-a-time scan with a bit-by-bit one.
func TestExtBitRuns(t *testing.T) {
	patterns := [][]byte{
		{}, {0}, {0xFF}, {0x01}, {0x80}, {0xF0, 0x0F},
		bytes.Repeat([]byte{0xFF}, 24), bytes.Repeat([]byte{0xAA}, 17),
		append(bytes.Repeat([]byte{0xFF}, 8), append(make([]byte, 8), 0xFF, 0x7F)...),
	}
	for _, p := range patterns {
		for _, n := range []uint64{0, 1, 7, 8, 9, 63, 64, 65, uint64(len(p)) * 8, uint64(len(p))*8 + 5} {
			var got, want [][2]uint64
			extBitRuns(p, n, func(s, l uint64) { got = append(got, [2]uint64{s, l}) })
			var start uint64
			in := false
			limit := min(n, uint64(len(p))*8)
			for i := uint64(0); i <= limit; i++ {
				set := i < limit && p[i/8]&(1<<(i%8)) != 0
				if set && !in {
					start, in = i, true
				} else if !set && in {
					want = append(want, [2]uint64{start, i - start})
					in = false
				}
			}
			if len(got) != len(want) || (len(got) > 0 && !equalRuns(got, want)) {
				t.Errorf("extBitRuns(%x, %d) = %v, want %v", p, n, got, want)
			}
		}
	}
}

func equalRuns(a, b [][2]uint64) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestExtTestdataReplay maps testdata/ext4-1k-needs-recovery.img.gz, a
// copy of a mounted ext4 (1 KiB blocks) taken after two journal commits,
// one deleting a file, none checkpointed: the superblock says 3000 blocks
// free, the bitmaps on disk show the state before the commits, and after
// e2fsck -fy replays the journal dumpe2fs says 2235 free of 4096.
func TestExtTestdataReplay(t *testing.T) {
	img := extImage(t, "ext4-1k-needs-recovery.img.gz")
	info, es, err := InUse(context.Background(), bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	extCheckExtents(t, es, info.TotalBytes)
	if want := int64(4096-2235) * 1024; info.UsedBytes != want {
		t.Errorf("UsedBytes after the in-memory replay = %d, want %d (e2fsck's)", info.UsedBytes, want)
	}
	// Without the replay the stale bitmaps would be mapped: check that
	// they do differ, or this image would not test the replay.
	s, err := parseExtSuper(img[1024:2048], int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	s.needsRecovery = false
	m := &extMapper{s: s, r: bytes.NewReader(img), window: extDescWindow}
	if err := m.run(context.Background()); err != nil {
		t.Fatal(err)
	}
	var stale int64
	for _, e := range Merge(m.out.es) {
		stale += e.Length
	}
	if stale == info.UsedBytes {
		t.Errorf("the stale bitmaps give the same %d bytes: the image does not exercise the replay", stale)
	}
}

// extFixDescCsum recomputes the metadata_csum checksum of group g's
// descriptor in img, a 1 KiB-block image whose descriptors start at 2048.
func extFixDescCsum(img []byte, g uint64) {
	s, err := parseExtSuper(img[1024:2048], int64(len(img)))
	if err != nil || !s.metadataCsum {
		return
	}
	d := img[2048+g*s.descSize : 2048+(g+1)*s.descSize]
	binary.LittleEndian.PutUint16(d[0x1E:], s.extDescCsum(g, d))
}

// TestExtCancelled: a cancelled context stops the map with its error.
func TestExtCancelled(t *testing.T) {
	img := extImage(t, "ext4-1k-flexbg.img.gz")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := InUse(ctx, bytes.NewReader(img), int64(len(img))); !errors.Is(err, context.Canceled) {
		t.Fatalf("InUse with a cancelled context: err = %v", err)
	}
}
