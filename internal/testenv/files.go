package testenv

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// FillOptions shapes the files [FillFiles] writes.
type FillOptions struct {
	// Seed makes the tree reproducible; the same seed writes the same
	// names and contents.
	Seed uint64
	// Files is how many files to write. Default 50.
	Files int
	// MaxSize is the largest file in bytes; sizes are spread between 0
	// and MaxSize, a few of them exactly block multiples. Default 1 MiB.
	MaxSize int
	// Dirs is how many subdirectories the files are spread over.
	// Default 5.
	Dirs int
	// Compressible writes runs of repeated bytes instead of random data.
	Compressible bool
}

// FillFiles writes a tree of files with pseudo-random names, sizes and
// contents below dir, syncs them, and returns their paths. It is how tests
// put real data on a real filesystem.
func FillFiles(t testing.TB, dir string, o FillOptions) []string {
	t.Helper()
	if o.Files == 0 {
		o.Files = 50
	}
	if o.MaxSize == 0 {
		o.MaxSize = 1 << 20
	}
	if o.Dirs == 0 {
		o.Dirs = 5
	}
	rng := rand.New(rand.NewPCG(o.Seed, 0x626c6f636b696d67))
	var paths []string
	buf := make([]byte, o.MaxSize)
	for i := 0; i < o.Files; i++ {
		sub := filepath.Join(dir, fmt.Sprintf("d%02d", rng.IntN(o.Dirs)))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		size := rng.IntN(o.MaxSize + 1)
		if i%7 == 0 {
			size -= size % 4096
		}
		data := buf[:size]
		if o.Compressible {
			for j := 0; j < size; {
				run := 1 + rng.IntN(512)
				b := byte(rng.IntN(4))
				for k := 0; k < run && j < size; k++ {
					data[j] = b
					j++
				}
			}
		} else {
			fillRandom(rng, data)
		}
		p := filepath.Join(sub, fmt.Sprintf("f%04d-%x.bin", i, rng.Uint32()))
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatalf("testenv: writing test file: %v", err)
		}
		paths = append(paths, p)
	}
	syncDir(t, dir)
	return paths
}

// syncDir flushes the filesystem holding dir (syncfs), so that what the
// test wrote is on the device before the test reads the device.
func syncDir(t testing.TB, dir string) {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	defer f.Close()
	if err := syncfs(f); err != nil {
		t.Fatalf("testenv: syncfs %s: %v", dir, err)
	}
}

// TreeDigest returns the SHA-256 of every regular file below dir, keyed by
// its path relative to dir, so that two trees can be compared with one
// equality check.
func TreeDigest(t testing.TB, dir string) map[string]string {
	t.Helper()
	sums := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		sums[rel] = hex.EncodeToString(h.Sum(nil))
		return nil
	})
	if err != nil {
		t.Fatalf("testenv: digest of %s: %v", dir, err)
	}
	return sums
}

// TreeDiff compares two TreeDigest results and describes the first
// difference (a file missing, added or with other contents), or returns
// "" when the trees are equal.
func TreeDiff(want, got map[string]string) string {
	for _, p := range slices.Sorted(maps.Keys(want)) {
		switch sum, ok := got[p]; {
		case !ok:
			return fmt.Sprintf("%s is missing (%d files, want %d)", p, len(got), len(want))
		case sum != want[p]:
			return fmt.Sprintf("%s differs", p)
		}
	}
	for _, p := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[p]; !ok {
			return fmt.Sprintf("%s should not be there (%d files, want %d)", p, len(got), len(want))
		}
	}
	return ""
}

// fillRandom fills b with bytes from rng.
func fillRandom(rng *rand.Rand, b []byte) {
	for len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, rng.Uint64())
		b = b[8:]
	}
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
}

// WriteRandomFile writes size pseudo-random bytes, determined by seed, to
// path. Data that does not compress is the hard case for compressors and
// for sparse copies alike.
func WriteRandomFile(t testing.TB, path string, size int64, seed uint64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(seed, 0x72616e646f6d))
	buf := make([]byte, 1<<20)
	for left := size; left > 0; {
		n := min(left, int64(len(buf)))
		fillRandom(rng, buf[:n])
		if _, err := f.Write(buf[:n]); err != nil {
			t.Fatalf("testenv: writing %s: %v", path, err)
		}
		left -= n
	}
	if err := f.Close(); err != nil {
		t.Fatalf("testenv: writing %s: %v", path, err)
	}
}
