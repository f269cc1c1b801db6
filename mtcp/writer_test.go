package mtcp

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
)

func TestMain(m *testing.M) {
	Main()
	os.Exit(m.Run())
}

// testData returns n bytes of a kind of real data: "binary" (the
// programs in /usr/bin, concatenated), "text" (Go's own sources), "zeros"
// or "random".
func testData(t testing.TB, kind string, n int) []byte {
	t.Helper()
	switch kind {
	case "zeros":
		return make([]byte, n)
	case "random":
		b := make([]byte, n)
		r := rand.NewChaCha8([32]byte{1, 2, 3})
		r.Read(b)
		return b
	}
	var dir, pattern string
	switch kind {
	case "binary":
		dir, pattern = "/usr/bin", "*"
	case "text":
		dir, pattern = filepath.Join(goroot(t), "src", "net", "http"), "*.go"
	default:
		t.Fatalf("unknown data kind %q", kind)
	}
	names, _ := filepath.Glob(filepath.Join(dir, pattern))
	var buf bytes.Buffer
	for _, name := range names {
		if buf.Len() >= n {
			break
		}
		fi, err := os.Stat(name)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		b, err := os.ReadFile(name)
		if err == nil {
			buf.Write(b)
		}
	}
	if buf.Len() < n {
		t.Fatalf("only %d bytes of %s data in %s, want %d", buf.Len(), kind, dir, n)
	}
	return buf.Bytes()[:n]
}

func goroot(t testing.TB) string {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		t.Fatalf("go env GOROOT: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// compress runs data through a Writer and returns the .xz bytes.
func compress(t testing.TB, data []byte, o Options) []byte {
	t.Helper()
	if o.Logf == nil {
		o.Logf = t.Logf
	}
	var out bytes.Buffer
	w, err := NewWriter(context.Background(), &out, o)
	if err != nil {
		t.Fatal(err)
	}
	// Odd write sizes cross chunk boundaries in every way.
	for p := data; len(p) > 0; {
		k := min(len(p), 7777)
		if _, err := w.Write(p[:k]); err != nil {
			t.Fatalf("Write: %v", err)
		}
		p = p[k:]
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return out.Bytes()
}

// stockXZ checks compressed with xz -t and xz -l and returns xz -dc's output.
func stockXZ(t testing.TB, compressed []byte) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f.xz")
	if err := os.WriteFile(path, compressed, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"-t", path}, {"-l", "--robot", path}} {
		if out, err := exec.Command("xz", args...).CombinedOutput(); err != nil {
			t.Fatalf("xz %v: %v\n%s", args, err, out)
		}
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("xz", "-dc", path)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("xz -dc: %v\n%s", err, stderr.Bytes())
	}
	return stdout.Bytes()
}

// xzBlocks returns the number of Blocks xz -l --robot reports.
func xzBlocks(t testing.TB, compressed []byte) int {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f.xz")
	os.WriteFile(path, compressed, 0o644)
	out, err := exec.Command("xz", "-l", "--robot", path).Output()
	if err != nil {
		t.Fatalf("xz -l: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Split(line, "\t")
		if f[0] == "file" && len(f) > 2 {
			var n int
			if _, err := fmt.Sscan(f[2], &n); err == nil {
				return n
			}
		}
	}
	t.Fatalf("no block count in xz -l output %q", out)
	return 0
}

func TestWriterStockXZAcceptsChunkBoundaries(t *testing.T) {
	testenv.Require(t, testenv.Commands("xz"))
	const cs = MinChunkSize
	data := testData(t, "binary", 3*cs+17)
	for _, n := range []int{0, 1, cs - 1, cs, cs + 1, 3*cs + 17} {
		o := Options{Level: 0, ChunkSize: cs, Children: 2}
		got := compress(t, data[:n], o)
		if back := stockXZ(t, got); !bytes.Equal(back, data[:n]) {
			t.Fatalf("size %d: xz -d gave %d bytes that differ from the input", n, len(back))
		}
		if want := (n + cs - 1) / cs; xzBlocks(t, got) != want {
			t.Fatalf("size %d: xz -l reports %d blocks, want %d", n, xzBlocks(t, got), want)
		}
	}
}

func TestWriterRealData(t *testing.T) {
	testenv.Require(t, testenv.Commands("xz"))
	for _, kind := range []string{"binary", "text", "zeros", "random"} {
		t.Run(kind, func(t *testing.T) {
			data := testData(t, kind, 5*MinChunkSize/2)
			var progressIn, progressOut int64
			got := compress(t, data, Options{Level: 1, ChunkSize: MinChunkSize, Progress: func(in, out int64) {
				progressIn, progressOut = in, out
			}})
			if back := stockXZ(t, got); !bytes.Equal(back, data) {
				t.Fatalf("xz -d output differs from the input")
			}
			if progressIn != int64(len(data)) || progressOut <= 0 || progressOut > int64(len(got)) {
				t.Fatalf("last progress (%d, %d), want (%d, <= %d)", progressIn, progressOut, len(data), len(got))
			}
			if kind == "zeros" && len(got) > len(data)/50 {
				t.Fatalf("zeros compressed to %d of %d bytes", len(got), len(data))
			}
		})
	}
}
