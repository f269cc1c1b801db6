package blockdev

import (
	"bytes"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/blockimage/blockimage/internal/testenv"
	"golang.org/x/sys/unix"
)

func TestOpenRegularFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := Open(path, os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Size() != int64(len(data)) || d.IsBlockDevice() || d.Path() != path {
		t.Fatalf("size %d block %v path %q", d.Size(), d.IsBlockDevice(), d.Path())
	}
	if d.LogicalSectorSize() < 512 || d.PhysicalSectorSize() < d.LogicalSectorSize() {
		t.Fatalf("sector sizes %d/%d", d.LogicalSectorSize(), d.PhysicalSectorSize())
	}
	p := make([]byte, 100)
	n, err := d.ReadAt(p, int64(len(data))-50)
	if n != 50 || err != io.EOF || !bytes.Equal(p[:50], data[len(data)-50:]) {
		t.Fatalf("read at end: n=%d err=%v", n, err)
	}
	if _, err := d.WriteAt([]byte("x"), 0); err == nil {
		t.Fatal("write to a read-only device succeeded")
	}
}

func TestOpenRejectsFlags(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	for _, flag := range []int{os.O_WRONLY, os.O_RDWR | os.O_CREATE, os.O_RDONLY | os.O_TRUNC} {
		if _, err := Open(path, flag); err == nil {
			t.Errorf("flag %#x accepted", flag)
		}
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("Open created a file")
	}
	if _, err := Open("/dev/null", os.O_RDONLY); err == nil {
		t.Fatal("a character device was accepted")
	}
}

func TestOpenDirectUnalignedRead(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "img")
	data := make([]byte, 3<<20+512)
	for i := range data {
		data[i] = byte(i * 7 / 3)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := Open(path, os.O_RDWR|unix.O_DIRECT)
	if errors.Is(err, unix.EINVAL) {
		t.Skipf("the filesystem of %s does not support O_DIRECT: %v", dir, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, c := range []struct {
		off int64
		n   int
	}{{0, 4096}, {1, 100}, {511, 2}, {4095, 1 << 20}, {12345, 2<<20 + 3}, {int64(len(data)) - 10, 10}} {
		p := make([]byte, c.n+1)[1:] // unaligned address too
		n, err := d.ReadAt(p, c.off)
		if err != nil || n != c.n || !bytes.Equal(p, data[c.off:c.off+int64(c.n)]) {
			t.Errorf("ReadAt(%d bytes, %d): n=%d err=%v, equal=%v", c.n, c.off, n, err, bytes.Equal(p[:n], data[c.off:c.off+int64(n)]))
		}
	}
	p := make([]byte, 20)
	if n, err := d.ReadAt(p, int64(len(data))-10); n != 10 || err != io.EOF {
		t.Errorf("read across the end: n=%d err=%v", n, err)
	}
	// Offsets whose end overflows int64: the end of the device, not a
	// panic in the bounce buffer's arithmetic.
	for _, off := range []int64{math.MaxInt64 - 10, math.MaxInt64 - bounceMax, 1 << 62} {
		if n, err := d.ReadAt(p, off); n != 0 || err != io.EOF {
			t.Errorf("ReadAt(%d) = %d, %v; want 0, EOF", off, n, err)
		}
	}
	if _, err := d.WriteAt(make([]byte, 100), 0); !errors.Is(err, ErrUnaligned) {
		t.Errorf("unaligned O_DIRECT write: %v, want ErrUnaligned", err)
	}
	buf := AlignedBuffer(8192, 4096)
	copy(buf, "aligned")
	if _, err := d.WriteAt(buf, 8192); err != nil {
		t.Errorf("aligned O_DIRECT write: %v", err)
	}
}

func TestOpenLoopDevice(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.LoopDevices)
	loop := testenv.NewLoopDevice(t, 64<<20)
	d, err := Open(loop.Path, os.O_RDWR|unix.O_DIRECT)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if !d.IsBlockDevice() || d.Size() != 64<<20 || d.LogicalSectorSize() != 512 || d.PhysicalSectorSize() < 512 {
		t.Fatalf("block %v size %d sectors %d/%d", d.IsBlockDevice(), d.Size(), d.LogicalSectorSize(), d.PhysicalSectorSize())
	}
	buf := AlignedBuffer(4096, 4096)
	copy(buf, "written through the device")
	if _, err := d.WriteAt(buf, 1<<20); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 26)
	if _, err := d.ReadAt(p, 1<<20); err != nil || string(p) != "written through the device" {
		t.Fatalf("read back %q, %v", p, err)
	}
	odd := make([]byte, 11)[1:] // unaligned address, length and offset
	if _, err := d.ReadAt(odd, 1<<20+8); err != nil || string(odd) != "through th" {
		t.Fatalf("unaligned O_DIRECT read %q, %v", odd, err)
	}
	if err := FlushBuffers(d.File()); err != nil {
		t.Fatalf("BLKFLSBUF: %v", err)
	}
	img, err := os.ReadFile(loop.Image)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(img[1<<20:], p) {
		t.Fatal("the write did not reach the image file")
	}
	n, err := d.ReadAt(make([]byte, 1024), d.Size()-512)
	if n != 512 || err != io.EOF {
		t.Fatalf("read across the device end: n=%d err=%v", n, err)
	}
}

func TestAlignedBuffer(t *testing.T) {
	for _, align := range []int{512, 4096, 3 /* not a power of two: 4096 */} {
		for _, n := range []int{0, 1, 4096, 100000} {
			b := AlignedBuffer(n, align)
			want := align
			if align == 3 {
				want = 4096
			}
			if len(b) != n || cap(b) != n {
				t.Errorf("AlignedBuffer(%d, %d): len %d cap %d", n, align, len(b), cap(b))
			}
			if n > 0 && uintptr(unsafe.Pointer(&b[0]))%uintptr(want) != 0 {
				t.Errorf("AlignedBuffer(%d, %d) not aligned", n, align)
			}
		}
	}
}
