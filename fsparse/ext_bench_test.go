package fsparse

import (
	"bytes"
	"context"
	"os"
	"testing"
)

// BenchmarkInUseImage maps the filesystem image or device named by
// FSPARSE_BENCH_IMAGE, whatever its type; bench/fsparse-map makes a 4 GiB
// image half full of real files and times this beside partclone.
func BenchmarkInUseImage(b *testing.B) {
	path := os.Getenv("FSPARSE_BENCH_IMAGE")
	if path == "" {
		b.Skip("FSPARSE_BENCH_IMAGE is not set (bench/fsparse-map sets it)")
	}
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		b.Fatal(err)
	}
	var info Info
	for b.Loop() {
		info, _, err = InUse(context.Background(), f, st.Size())
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(info.UsedBytes), "used-bytes")
	b.ReportMetric(float64(info.MetadataBytesRead), "metadata-bytes/op")
}

// BenchmarkExtInUse maps the small testdata images from memory: the
// parsing cost alone, without I/O.
func BenchmarkExtInUse(b *testing.B) {
	for _, tc := range extTestdata {
		img := extImage(b, tc.file)
		b.Run(tc.file, func(b *testing.B) {
			r := bytes.NewReader(img)
			for b.Loop() {
				if _, _, err := InUse(context.Background(), r, int64(len(img))); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
