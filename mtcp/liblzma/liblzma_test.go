//go:build cgo

package liblzma_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
	"github.com/blockimage/blockimage/mtcp"
	"github.com/blockimage/blockimage/mtcp/liblzma"
)

func TestMain(m *testing.M) {
	mtcp.Main()
	os.Exit(m.Run())
}

// usrBin returns n bytes of the programs in /usr/bin.
func usrBin(t *testing.T, n int) []byte {
	names, _ := filepath.Glob("/usr/bin/*")
	var buf bytes.Buffer
	for _, name := range names {
		if fi, err := os.Stat(name); err == nil && fi.Mode().IsRegular() && buf.Len() < n {
			b, _ := os.ReadFile(name)
			buf.Write(b)
		}
	}
	if buf.Len() < n {
		t.Fatalf("only %d bytes in /usr/bin", buf.Len())
	}
	return buf.Bytes()[:n]
}

func xz(t *testing.T, stdin []byte, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("xz", args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("xz %v: %v %s", args, err, stderr.Bytes())
	}
	return out
}

// TestLiblzmaCodec compresses real binaries in several chunks through
// children running liblzma, and checks stock xz reads the output and that
// it is no more than 1% larger than xz's own at the same preset and block
// size.
func TestLiblzmaCodec(t *testing.T) {
	testenv.Require(t, testenv.Commands("xz"))
	if !liblzma.Available() {
		t.Fatal("built with cgo but the codec says it is unavailable")
	}
	data := usrBin(t, 2<<20+4321)
	for _, level := range []int{0, 6} {
		var out bytes.Buffer
		w, err := mtcp.NewWriter(context.Background(), &out, mtcp.Options{Level: level, Codec: liblzma.Name, ChunkSize: 1 << 20, Children: 2, Logf: t.Logf})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if back := xz(t, out.Bytes(), "-dc"); !bytes.Equal(back, data) {
			t.Fatalf("level %d: xz -d output differs from the input", level)
		}
		stock := xz(t, data, "-c", "-"+string(rune('0'+level)), "-T1", "--block-size=1MiB")
		if float64(out.Len()) > 1.01*float64(len(stock)) {
			t.Errorf("level %d: %d bytes, xz -T1 --block-size=1MiB writes %d", level, out.Len(), len(stock))
		}
		t.Logf("level %d: %d -> %d bytes (xz: %d)", level, len(data), out.Len(), len(stock))
	}
}
