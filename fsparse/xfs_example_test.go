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

// Map the in-use blocks of an XFS image: everything its free-space
// B+trees do not list as free, AG headers, log and free lists included.
func ExampleInUse_xfs() {
	f, err := os.Open("testdata/xfs-v5-1k.img.gz")
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		log.Fatal(err)
	}
	img, err := io.ReadAll(z)
	if err != nil {
		log.Fatal(err)
	}
	dev := bytes.NewReader(img) // an *os.File of a device works the same
	info, extents, err := fsparse.InUse(context.Background(), dev, dev.Size())
	if err != nil {
		log.Fatal(err) // or back up fsparse.AllBlocks(dev.Size())
	}
	fmt.Printf("%s %q: %d-byte blocks, %d of %d bytes in use in %d extents\n",
		info.Filesystem, info.Label, info.BlockSize, info.UsedBytes, info.TotalBytes, len(extents))
	fmt.Println("first extent:", extents[0])
	// Output:
	// xfs "xfsseed": 1024-byte blocks, 4031488 of 16777216 bytes in use in 2 extents
	// first extent: {0 3628032}
}
