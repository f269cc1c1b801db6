package nbd

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockimage/blockimage/internal/testenv"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// interopServers are the real servers and configurations our client must
// work with.
var interopServers = []struct {
	name string
	kind testenv.NBDServerKind
	o    testenv.NBDOptions
	// structured: the server negotiates structured replies.
	structured bool
	// image: the data lands in an image file we can compare with.
	image bool
}{
	{"nbd-server", testenv.NBDServer, testenv.NBDOptions{}, false, true},
	{"nbd-server-unix", testenv.NBDServer, testenv.NBDOptions{Unix: true}, false, true},
	{"qemu-nbd", testenv.QemuNBD, testenv.NBDOptions{}, true, true},
	{"qemu-nbd-unix-multiconn", testenv.QemuNBD, testenv.NBDOptions{Unix: true, Args: []string{"--shared=4"}}, true, true},
	{"nbdkit-file", testenv.Nbdkit, testenv.NBDOptions{}, true, true},
	{"nbdkit-file-unix", testenv.Nbdkit, testenv.NBDOptions{Unix: true}, true, true},
	{"nbdkit-memory", testenv.Nbdkit, testenv.NBDOptions{Plugin: "memory"}, true, false},
	{"nbdkit-no-sr", testenv.Nbdkit, testenv.NBDOptions{Args: []string{}}, false, true},
	{"nbdkit-blocksize-policy", testenv.Nbdkit, testenv.NBDOptions{Filters: []string{"blocksize-policy"},
		Args: []string{"blocksize-minimum=4096", "blocksize-preferred=65536", "blocksize-maximum=262144", "blocksize-error-policy=error"}}, true, true},
}

func TestInterop(t *testing.T) {
	for _, s := range interopServers {
		t.Run(s.name, func(t *testing.T) {
			o := s.o
			o.Size = 16 << 20
			if s.name == "nbdkit-no-sr" {
				// nbdkit's --no-sr is a server option: it goes before the plugin.
				o.Filters = nil
			}
			srv := startServer(t, s.kind, o, s.name == "nbdkit-no-sr")
			ctx := testCtx(t)
			c, err := Dial(ctx, srv.URI, Options{MetaContexts: []string{"base:allocation"}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if c.Size() != o.Size {
				t.Fatalf("size %d, want %d", c.Size(), o.Size)
			}
			if c.StructuredReplies() != s.structured {
				t.Errorf("structured replies %v, want %v", c.StructuredReplies(), s.structured)
			}
			min, pref, max := c.BlockSizes()
			t.Logf("flags %#x, block sizes %d/%d/%d, conns %d, contexts %v", c.Flags(), min, pref, max, c.Connections(), c.MetaContexts())
			if s.name == "nbdkit-blocksize-policy" && (min != 4096 || max != 262144) {
				t.Errorf("block sizes %d/%d/%d, want 4096/65536/262144", min, pref, max)
			}
			exerciseClient(t, ctx, c, srv.Image)
			c.Close()
			{ // NBD_OPT_INFO, then abort
				info, err := Info(ctx, srv.URI, Options{})
				if err != nil {
					t.Fatalf("Info: %v", err)
				}
				if s.kind == testenv.NBDServer {
					// nbd-server 3.24 answers NBD_OPT_INFO with size 0: it
					// opens the export only for NBD_OPT_GO.
					info.Size = o.Size
				}
				if info.Size != o.Size || info.Flags != c.Flags() {
					t.Errorf("Info %+v, Dial saw size %d flags %#x", info, c.Size(), c.Flags())
				}
			}
			if srv.Image == "" {
				return
			}
			// The sink over the same server: zero runs become WRITE_ZEROES.
			src := halfZeroImage(uint64(len(s.name)), int(o.Size))
			sink, err := NewSink(ctx, srv.URI, SinkOptions{MaxUnflushed: 4 << 20})
			if err != nil {
				t.Fatal(err)
			}
			defer sink.Close()
			writeAll(t, ctx, sink, src, 9, nil)
			if err := sink.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			checkImage(t, srv.Image, src)
		})
	}
}

// startServer starts a test server; noSR adds nbdkit's --no-sr.
func startServer(t *testing.T, kind testenv.NBDServerKind, o testenv.NBDOptions, noSR bool) *testenv.NBD {
	if noSR {
		// testenv passes Args after the plugin name, where nbdkit still
		// accepts options that begin with "--".
		o.Args = append([]string{"--no-sr"}, o.Args...)
	}
	return testenv.StartNBD(t, kind, o)
}

// exerciseClient writes random data in pieces of several sizes, zeroes and
// trims, reads everything back and compares with the image file.
func exerciseClient(t *testing.T, ctx context.Context, c *Client, image string) {
	t.Helper()
	size := c.Size()
	want := randBytes(uint64(size), int(size))
	// Write in pieces of different sizes, concurrently, to get out-of-order
	// replies.
	errs := make(chan error, 4)
	quarter := size / 4
	for i := int64(0); i < 4; i++ {
		go func() {
			off, end := i*quarter, (i+1)*quarter
			step := int64(4096) << i
			var err error
			for ; off < end && err == nil; off += step {
				err = c.WriteAt(ctx, want[off:off+step], off)
			}
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if c.Flags()&FlagSendWriteZeroes != 0 {
		if err := c.WriteZeroes(ctx, 1<<20, 256<<10); err != nil {
			t.Fatal(err)
		}
		clear(want[1<<20 : 1<<20+256<<10])
		if err := c.WriteZeroes(ctx, 3<<20, 64<<10, NoHole); err != nil {
			t.Fatal(err)
		}
		clear(want[3<<20 : 3<<20+64<<10])
	}
	if c.Flags()&FlagSendFUA != 0 {
		if err := c.WriteAt(ctx, want[:8192], 0, FUA); err != nil {
			t.Fatal(err)
		}
	}
	if c.Flags()&FlagSendFlush != 0 {
		if err := c.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, size)
	if err := c.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("read back differs at %d", i)
	}
	if image != "" {
		disk, err := os.ReadFile(image)
		if err != nil {
			t.Fatal(err)
		}
		if i := firstDiff(disk, want); i >= 0 {
			t.Fatalf("image file differs at %d", i)
		}
	}
	// Trim is advisory: it need not zero, so only check it succeeds.
	if c.Flags()&FlagSendTrim != 0 {
		if err := c.Trim(ctx, 8<<20, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	// Out of range and unaligned requests fail cleanly, before the wire.
	if err := c.ReadAt(ctx, make([]byte, 4096), size); err == nil {
		t.Error("read past the end succeeded")
	}
	if err := c.ReadAt(ctx, got[:4096], 0); err != nil {
		t.Fatalf("connection unusable after a rejected request: %v", err)
	}
}

func firstDiff(a, b []byte) int {
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// TestBlockStatusQemu reads base:allocation from qemu-nbd over a sparse
// image with known data regions.
func TestBlockStatusQemu(t *testing.T) {
	srv := testenv.StartNBD(t, testenv.QemuNBD, testenv.NBDOptions{Size: 16 << 20})
	ctx := testCtx(t)
	c, err := Dial(ctx, srv.URI, Options{MetaContexts: []string{"base:allocation"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WriteAt(ctx, randBytes(1, 1<<20), 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	ext, err := c.BlockStatus(ctx, "base:allocation", 0, c.Size())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("extents %+v", ext)
	pos := int64(0)
	for _, e := range ext {
		if e.Offset != pos || e.Length <= 0 {
			t.Fatalf("extents not contiguous at %d: %+v", pos, ext)
		}
		pos += e.Length
		data := e.Offset < 5<<20 && e.Offset+e.Length > 4<<20
		if data && e.Flags&StateZero != 0 {
			t.Errorf("written range reported zero: %+v", e)
		}
		if e.Offset >= 8<<20 && e.Flags&StateZero == 0 {
			t.Errorf("unwritten range not reported zero: %+v", e)
		}
	}
	if pos != c.Size() {
		t.Fatalf("extents cover %d of %d bytes", pos, c.Size())
	}
	if _, err := c.BlockStatus(ctx, "qemu:dirty-bitmap:none", 0, 4096); !errors.Is(err, ErrUnsupported) {
		t.Errorf("unnegotiated context: %v", err)
	}
}

// TestDirtyBitmapQemu reads qemu:dirty-bitmap:NAME from qemu-nbd, as the
// incremental backup of a guest disk will.
func TestDirtyBitmapQemu(t *testing.T) {
	testenv.Require(t, testenv.Commands("qemu-img"))
	img := filepath.Join(testenv.TempDir(t), "disk.qcow2")
	for _, args := range [][]string{
		{"create", "-q", "-f", "qcow2", img, "16M"},
		{"bitmap", "--add", img, "b0"},
	} {
		if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
		}
	}
	srv := testenv.StartNBD(t, testenv.QemuNBD, testenv.NBDOptions{Image: img, Format: "qcow2", Args: []string{"--bitmap=b0"}})
	ctx := testCtx(t)
	const ctxName = "qemu:dirty-bitmap:b0"
	c, err := Dial(ctx, srv.URI, Options{MetaContexts: []string{"base:allocation", ctxName}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Writes through the export mark the enabled bitmap dirty.
	if err := c.WriteAt(ctx, randBytes(2, 1<<20), 4<<20); err != nil {
		t.Fatal(err)
	}
	ext, err := c.BlockStatus(ctx, ctxName, 0, c.Size())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("dirty bitmap: %+v", ext)
	var dirty []Extent
	for _, e := range ext {
		if e.Flags&1 != 0 {
			dirty = append(dirty, Extent{e.Offset, e.Length})
		}
	}
	if len(dirty) != 1 || dirty[0].Offset > 4<<20 || dirty[0].End() < 5<<20 || dirty[0].Length > 2<<20 {
		t.Fatalf("dirty extents %v, want about 4 MiB+1 MiB", dirty)
	}
}
