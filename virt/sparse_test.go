package virt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// sparseSource writes a 8 MiB file: random data at 0 and 5 MiB, a region
// of written (allocated) zeros at 2 MiB, holes elsewhere, and an odd tail.
func sparseSource(t *testing.T) (string, []byte) {
	t.Helper()
	const size = 8<<20 + 123
	content := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, r := range [][2]int{{0, 300 << 10}, {5 << 20, 5<<20 + 70000}, {size - 100, size}} {
		for i := r[0]; i < r[1]; i++ {
			content[i] = byte(rng.UintN(255) + 1)
		}
	}
	path := filepath.Join(t.TempDir(), "src.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]int{{0, 300 << 10}, {2 << 20, 3 << 20}, {5 << 20, 5<<20 + 70000}, {size - 100, size}} {
		if _, err := f.WriteAt(content[r[0]:r[1]], int64(r[0])); err != nil {
			t.Fatal(err)
		}
	}
	return path, content
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

func TestCopySparse(t *testing.T) {
	src, content := sparseSource(t)
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	dstPath := filepath.Join(t.TempDir(), "dst.img")
	out, err := os.Create(dstPath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	var last int64
	c := Copier{Progress: func(done, total int64) {
		if done < last || total != int64(len(content)) {
			t.Errorf("progress %d/%d after %d", done, total, last)
		}
		last = done
	}}
	d, err := c.CopySparse(context.Background(), out, in, int64(len(content)))
	if err != nil {
		t.Fatal(err)
	}
	if d.SHA256 != sha(content) || d.Size != int64(len(content)) || last != d.Size {
		t.Fatalf("digest %+v, want sha %s; last progress %d", d, sha(content), last)
	}
	got, err := os.ReadFile(dstPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, content) {
		t.Fatal("copy differs from source")
	}
	// The data is ~370 KiB; the 1 MiB of written zeros must not be copied.
	if d.DataBytes > 400<<10 {
		t.Errorf("wrote %d data bytes, want < 400 KiB", d.DataBytes)
	}
	if a := allocated(t, dstPath); a > 600<<10 {
		t.Errorf("destination allocates %d bytes, want holes (< 600 KiB)", a)
	}
	if a := allocated(t, src); a < 1<<20 {
		t.Fatalf("test setup: source allocates only %d bytes, the zero region is not allocated", a)
	}
}

func TestLogicalRoundTrip(t *testing.T) {
	src, content := sparseSource(t)
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	var stream bytes.Buffer
	d, err := Copier{}.WriteLogical(context.Background(), &stream, in, int64(len(content)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stream.Bytes(), content) || d.SHA256 != sha(content) {
		t.Fatal("logical stream differs from content")
	}
	dir := t.TempDir()
	restore := func(name string, r []byte) (Digest, error) {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		return Copier{}.ReadLogical(context.Background(), f, bytes.NewReader(r), int64(len(content)))
	}
	d2, err := restore("ok.img", stream.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if d2.SHA256 != d.SHA256 {
		t.Fatal("restored digest differs")
	}
	got, _ := os.ReadFile(filepath.Join(dir, "ok.img"))
	if !bytes.Equal(got, content) {
		t.Fatal("restored content differs")
	}
	if a := allocated(t, filepath.Join(dir, "ok.img")); a > 600<<10 {
		t.Errorf("restored image allocates %d bytes, want holes", a)
	}
	if _, err := restore("short.img", stream.Bytes()[:len(content)-1]); !errors.Is(err, ErrSize) {
		t.Errorf("short stream: %v, want ErrSize", err)
	}
	if _, err := restore("long.img", append(stream.Bytes(), 0)); !errors.Is(err, ErrSize) {
		t.Errorf("long stream: %v, want ErrSize", err)
	}
}

func TestCopyCancelled(t *testing.T) {
	src, content := sparseSource(t)
	in, _ := os.Open(src)
	defer in.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var b bytes.Buffer
	if _, err := (Copier{}).WriteLogical(ctx, &b, in, int64(len(content))); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
}

func TestEmptyImage(t *testing.T) {
	dir := t.TempDir()
	in, _ := os.Create(filepath.Join(dir, "empty"))
	out, _ := os.Create(filepath.Join(dir, "out"))
	d, err := Copier{}.CopySparse(context.Background(), out, in, 0)
	if err != nil || d.SHA256 != sha(nil) {
		t.Fatalf("%+v %v", d, err)
	}
}

func TestFileSHA256(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("abc"), 0o600)
	s, n, err := FileSHA256(context.Background(), p)
	if err != nil || n != 3 || s != sha([]byte("abc")) {
		t.Fatalf("%s %d %v", s, n, err)
	}
}

func TestNoHashThenHash(t *testing.T) {
	src, content := sparseSource(t)
	in, _ := os.Open(src)
	defer in.Close()
	dstPath := filepath.Join(t.TempDir(), "dst")
	out, _ := os.Create(dstPath)
	defer out.Close()
	d, err := Copier{NoHash: true, NoSync: true}.CopySparse(context.Background(), out, in, int64(len(content)))
	if err != nil || d.SHA256 != "" {
		t.Fatalf("%+v %v", d, err)
	}
	h, err := Copier{}.Hash(context.Background(), out, int64(len(content)))
	if err != nil || h.SHA256 != sha(content) || h.DataBytes < d.DataBytes {
		t.Fatalf("hash of the copy %+v (copy %+v) %v", h, d, err)
	}
}
