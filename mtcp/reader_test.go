package mtcp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
)

// onlyReader hides io.ReaderAt so NewReader takes the sequential path.
type onlyReader struct{ io.Reader }

// decompressBoth reads xz with the parallel and the sequential path and
// checks they agree; it returns the data or the first error.
func decompressBoth(t *testing.T, xz []byte) ([]byte, error) {
	t.Helper()
	var outs [2][]byte
	var errs [2]error
	for i, r := range []io.Reader{bytes.NewReader(xz), onlyReader{bytes.NewReader(xz)}} {
		zr, err := NewReader(context.Background(), r, ReaderOptions{Workers: 2})
		if err != nil {
			errs[i] = err
			continue
		}
		outs[i], errs[i] = io.ReadAll(zr)
		zr.Close()
	}
	if (errs[0] == nil) != (errs[1] == nil) {
		t.Fatalf("parallel and sequential disagree: %v / %v", errs[0], errs[1])
	}
	if errs[0] != nil {
		return nil, errs[0]
	}
	if !bytes.Equal(outs[0], outs[1]) {
		t.Fatalf("parallel and sequential outputs differ")
	}
	return outs[0], nil
}

// stockCompress runs xz with args on data.
func stockCompress(t *testing.T, data []byte, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("xz", append([]string{"-c"}, args...)...)
	cmd.Stdin = bytes.NewReader(data)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("xz %v: %v %s", args, err, stderr.Bytes())
	}
	return out
}

func TestReaderOwnOutput(t *testing.T) {
	data := testData(t, "text", 3*MinChunkSize+5)
	xz := compress(t, data, Options{Level: 0, ChunkSize: MinChunkSize})
	got, err := decompressBoth(t, xz)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("round trip: err %v, %d bytes, equal %v", err, len(got), bytes.Equal(got, data))
	}
}

func TestReaderStockXZ(t *testing.T) {
	testenv.Require(t, testenv.Commands("xz"))
	data := testData(t, "binary", 300<<10)
	a := stockCompress(t, data[:100<<10], "-0")
	b := stockCompress(t, data[100<<10:], "-1", "-T2", "--block-size=64KiB", "--check=sha256")
	pad := []byte{0, 0, 0, 0, 0, 0, 0, 0}
	for _, tc := range []struct {
		name string
		xz   []byte
		want []byte
	}{
		{"single block", a, data[:100<<10]},
		{"multi block sha256", b, data[100<<10:]},
		{"crc32", stockCompress(t, data, "-0", "--check=crc32"), data},
		{"no check", stockCompress(t, data, "-0", "--check=none"), data},
		{"empty", stockCompress(t, nil, "-0"), nil},
		{"two streams", append(append([]byte{}, a...), b...), data},
		{"padded streams", bytes.Join([][]byte{a, pad, b, pad[:4]}, nil), data},
		{"level 9 dictionary", stockCompress(t, data[:1000], "-9"), data[:1000]},
	} {
		got, err := decompressBoth(t, tc.xz)
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("%s: err %v, %d bytes, want %d", tc.name, err, len(got), len(tc.want))
		}
	}
}

func TestReaderRejectsCorruption(t *testing.T) {
	data := testData(t, "text", 2*MinChunkSize+99)
	xz := compress(t, data, Options{Level: 0, ChunkSize: MinChunkSize})
	cases := map[string][]byte{
		"truncated":       xz[:len(xz)-7],
		"cut in a block":  xz[:len(xz)/2],
		"trailing byte":   append(append([]byte{}, xz...), 1),
		"trailing zeros3": append(append([]byte{}, xz...), 0, 0, 0),
		"garbage":         []byte("this is not xz at all"),
		"nothing":         nil,
	}
	for _, off := range []int{13, len(xz) / 3, len(xz) / 2, len(xz) - 30, len(xz) - 3} {
		c := append([]byte{}, xz...)
		c[off] ^= 0x20
		cases["flip at "+itoa(off)] = c
	}
	for name, c := range cases {
		_, err := decompressBoth(t, c)
		if !errors.Is(err, ErrFormat) {
			t.Errorf("%s: err %v, want ErrFormat", name, err)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestReaderFile takes the parallel path through an *os.File.
func TestReaderFile(t *testing.T) {
	data := testData(t, "binary", 4*MinChunkSize)
	path := filepath.Join(t.TempDir(), "f.xz")
	if err := os.WriteFile(path, compress(t, data, Options{Level: 0, ChunkSize: MinChunkSize}), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := NewReader(context.Background(), f, ReaderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := zr.r.(*parallelReader); !ok && zr != nil {
		t.Fatalf("an *os.File of 4 blocks was read with %T, want the parallel reader", zr.r)
	}
	got, err := io.ReadAll(zr)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("err %v, equal %v", err, bytes.Equal(got, data))
	}
}

// FuzzReader decodes arbitrary input by both paths: an error or data,
// never a panic, a hang or a huge allocation (the limits are small).
func FuzzReader(f *testing.F) {
	f.Add(compress(f, []byte("hello, hello, hello"), Options{Level: 0, ChunkSize: MinChunkSize}))
	f.Add(compress(f, nil, Options{Level: 0, ChunkSize: MinChunkSize}))
	f.Add(append(compress(f, []byte("ab"), Options{Level: 0, ChunkSize: MinChunkSize}), 0, 0, 0, 0))
	f.Fuzz(func(t *testing.T, in []byte) {
		o := ReaderOptions{Workers: 2, MaxDictSize: 1 << 20, MaxBlockBuffer: 1 << 20}
		for _, r := range []io.Reader{bytes.NewReader(in), onlyReader{bytes.NewReader(in)}} {
			zr, err := NewReader(context.Background(), r, o)
			if err != nil {
				continue
			}
			io.Copy(io.Discard, io.LimitReader(zr, 4<<20))
			zr.Close()
		}
		if locs, err := locateBlocks(bytes.NewReader(in), int64(len(in))); err == nil {
			var total int64
			for _, l := range locs {
				if l.offset < 0 || l.offset+padded4(l.rec.unpadded) > int64(len(in)) {
					t.Fatalf("block %+v outside the input of %d bytes", l, len(in))
				}
				total += l.rec.unpadded
			}
			if total > int64(len(in)) {
				t.Fatalf("blocks of %d bytes in %d", total, len(in))
			}
		}
	})
}
