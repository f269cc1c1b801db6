package fsparse

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// The XFS and ReiserFS images in testdata need no tools to test and seed
// the fuzz targets. The wanted figures are the tools' own:
//
//	xfs-v5-1k.img.gz: 16 MiB, mkfs.xfs 6.1.0 -b size=1024 -d agcount=1
//	  -L xfsseed -m uuid=... -p PROTO (three small files). xfs_db: dblocks
//	  16384, agf 0 freeblks 12447 (fdblocks 12451 = 12447 + flcount 4).
//	xfs-v4-512.img.gz: 32 MiB, mkfs.xfs -m crc=0 -b size=512 -d agcount=2
//	  -p PROTO. xfs_db: dblocks 65536, freeblks 32588 + 27323.
//	reiserfs-3.6-1k.img.gz: 8 MiB, mkreiserfs 3.6.27 -b 1024 -s 513
//	  -l reiserseed -u ... -B (5 bad blocks): non-standard journal.
//	  debugreiserfs: 8192 blocks, 7607 free.
//	reiserfs-3.5-4k.img.gz: 36 MiB, mkreiserfs --format 3.5 -B (4 bad
//	  blocks). debugreiserfs: 9216 blocks, 1000 free.
var xrTestdata = []struct {
	file, fstype, label, uuid string
	blockSize, usedBlocks     int64
}{
	{"xfs-v5-1k.img.gz", "xfs", "xfsseed", "5e6d3a4b-1c2d-4e5f-8a9b-0c1d2e3f4a5b", 1024, 16384 - 12447},
	{"xfs-v4-512.img.gz", "xfs", "xfsv4seed", "6e6d3a4b-1c2d-4e5f-8a9b-0c1d2e3f4a5b", 512, 65536 - 32588 - 27323},
	{"reiserfs-3.6-1k.img.gz", "reiserfs", "reiserseed", "7e6d3a4b-1c2d-4e5f-8a9b-0c1d2e3f4a5b", 1024, 8192 - 7607},
	{"reiserfs-3.5-4k.img.gz", "reiserfs", "", "", 4096, 9216 - 1000},
}

var xrImageCache sync.Map

// xrImage returns a copy of a decompressed testdata image.
func xrImage(t testing.TB, file string) []byte {
	t.Helper()
	if b, ok := xrImageCache.Load(file); ok {
		return bytes.Clone(b.([]byte))
	}
	f, err := os.Open(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(z)
	if err != nil {
		t.Fatal(err)
	}
	xrImageCache.Store(file, b)
	return bytes.Clone(b)
}

func TestXFSAndReiserFSTestdata(t *testing.T) {
	for _, c := range xrTestdata {
		t.Run(c.file, func(t *testing.T) {
			img := xrMem(xrImage(t, c.file))
			info, used, err := InUse(context.Background(), img, int64(len(img)))
			if err != nil {
				t.Fatal(err)
			}
			if info.Filesystem != c.fstype || info.Label != c.label || info.UUID != c.uuid || info.BlockSize != c.blockSize {
				t.Fatalf("info %+v", info)
			}
			if info.UsedBytes != c.usedBlocks*c.blockSize {
				t.Fatalf("used %d bytes, the tools say %d blocks of %d", info.UsedBytes, c.usedBlocks, c.blockSize)
			}
			xrCheckMap(t, info, used, int64(len(img)))
			d, err := Detect(img, int64(len(img)))
			if err != nil || d.UsedBytes != info.UsedBytes || d.Filesystem != c.fstype {
				t.Fatalf("Detect %+v, %v", d, err)
			}
			if info.MetadataBytesRead <= 0 || info.MetadataBytesRead > 64<<10 {
				t.Fatalf("read %d bytes of metadata", info.MetadataBytesRead)
			}
			t.Logf("%s: %d bytes used, %d bytes of metadata read", c.file, info.UsedBytes, info.MetadataBytesRead)
			// A device cut short of the filesystem is refused.
			if _, _, err := InUse(context.Background(), img[:len(img)-4096], int64(len(img)-4096)); err == nil {
				t.Fatal("InUse accepted a truncated device")
			}
		})
	}
}

// xrCheckMap checks what every map must satisfy: sorted, merged, inside
// the filesystem and the device, summing to UsedBytes.
func xrCheckMap(t *testing.T, info Info, used []Extent, size int64) {
	t.Helper()
	var prevEnd int64 = -1
	var sum int64
	for _, e := range used {
		if e.Length <= 0 || e.Offset <= prevEnd || e.End() > info.TotalBytes || e.End() > size {
			t.Fatalf("bad extent %+v after end %d (total %d, device %d)", e, prevEnd, info.TotalBytes, size)
		}
		if e.Offset%info.BlockSize != 0 || e.Length%info.BlockSize != 0 {
			t.Fatalf("extent %+v not block-aligned", e)
		}
		prevEnd = e.End()
		sum += e.Length
	}
	if sum != info.UsedBytes || info.UsedBytes+info.FreeBytes != info.TotalBytes || info.TotalBytes > size {
		t.Fatalf("extents sum to %d; info %+v; device %d", sum, info, size)
	}
}

// BenchmarkXFSInUse and BenchmarkReiserFSInUse map the testdata images
// from memory: the parsing cost alone, without I/O. bench/fsparse-map
// times real 4 GiB images beside partclone.
func BenchmarkXFSInUse(b *testing.B) { xrBenchInUse(b, "xfs-v5-1k.img.gz") }

func BenchmarkReiserFSInUse(b *testing.B) { xrBenchInUse(b, "reiserfs-3.5-4k.img.gz") }

func xrBenchInUse(b *testing.B, file string) {
	img := xrMem(xrImage(b, file))
	var info Info
	for b.Loop() {
		var err error
		if info, _, err = InUse(context.Background(), img, int64(len(img))); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(info.MetadataBytesRead), "metadata-bytes/op")
}
