package mtcp_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"strings"

	"github.com/blockimage/blockimage/mtcp"
)

// A program calls mtcp.Main first thing in main (here TestMain does); then
// a Writer compresses through child processes and a Reader reads it back.
func Example() {
	ctx := context.Background()
	input := strings.Repeat("a disk image, mostly the same bytes again and again\n", 5000)

	var compressed bytes.Buffer
	w, err := mtcp.NewWriter(ctx, &compressed, mtcp.Options{Level: 1, Children: 2, ChunkSize: mtcp.MinChunkSize})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := io.Copy(w, strings.NewReader(input)); err != nil {
		log.Fatal(err)
	}
	if err := w.Close(); err != nil { // writes the Index and Stream Footer
		log.Fatal(err)
	}

	// bytes.Reader is an io.ReaderAt with a Size: Blocks decode in parallel.
	r, err := mtcp.NewReader(ctx, bytes.NewReader(compressed.Bytes()), mtcp.ReaderOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	output, err := io.ReadAll(r)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(input), "bytes in 4 Blocks, round trip exact:", string(output) == input)
	// Output: 260000 bytes in 4 Blocks, round trip exact: true
}
