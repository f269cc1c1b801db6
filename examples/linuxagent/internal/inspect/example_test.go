package inspect_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"

	"github.com/blockimage/blockimage/examples/linuxagent/internal/inspect"
)

// ExampleRun inspects a small ext4 image (testdata, made by mke2fs) as
// `linuxagent inspect IMAGE --json --extents` would, and reads the report.
func ExampleRun() {
	dir, err := os.MkdirTemp("", "inspect-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "ext4.img")
	if err := gunzipTo("testdata/ext4-1k-flexbg.img.gz", img); err != nil {
		log.Fatal(err)
	}

	var out bytes.Buffer
	if code := inspect.Run(context.Background(), []string{img, "--json", "--extents"}, &out, os.Stderr); code != 0 {
		log.Fatalf("exit status %d", code)
	}
	var r struct {
		Filesystem string     `json:"filesystem"`
		BlockSize  int64      `json:"block_size"`
		TotalBytes int64      `json:"total_bytes"`
		UsedBytes  int64      `json:"used_bytes"`
		FreeBytes  int64      `json:"free_bytes"`
		Extents    [][2]int64 `json:"extents"`
	}
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s: %d-byte blocks, %d of %d bytes used, %d free\n", r.Filesystem, r.BlockSize, r.UsedBytes, r.TotalBytes, r.FreeBytes)
	fmt.Printf("%d extents, the first %d bytes at %d\n", len(r.Extents), r.Extents[0][1], r.Extents[0][0])
	// Output:
	// ext4: 1024-byte blocks, 2295808 of 4194304 bytes used, 1898496 free
	// 6 extents, the first 66560 bytes at 0
}

func gunzipTo(src, dst string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return err
	}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, zr); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
