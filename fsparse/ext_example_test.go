package fsparse_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"log"
	"os"

	"github.com/blockimage/blockimage/fsparse"
)

// ExampleInUse_ext maps a small ext4 image and prints what a full backup
// would read. On a real device, open it read-only (after freezing a
// mounted filesystem) and pass its size.
func ExampleInUse_ext() {
	img, err := gunzip("testdata/ext4-1k-flexbg.img.gz")
	if err != nil {
		log.Fatal(err)
	}
	info, extents, err := fsparse.InUse(context.Background(), bytes.NewReader(img), int64(len(img)))
	if err != nil {
		// An unknown or damaged filesystem: a backup can still copy
		// everything.
		extents = fsparse.AllBlocks(int64(len(img)))
	}
	fmt.Printf("%s, %d-byte blocks, label %q\n", info.Filesystem, info.BlockSize, info.Label)
	fmt.Printf("used %d of %d bytes in %d extents\n", info.UsedBytes, info.TotalBytes, len(extents))
	fmt.Printf("first extent: %d bytes at offset %d\n", extents[0].Length, extents[0].Offset)
	// Output:
	// ext4, 1024-byte blocks, label "fuzzseed"
	// used 2295808 of 4194304 bytes in 6 extents
	// first extent: 66560 bytes at offset 0
}

func gunzip(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(zr)
}
