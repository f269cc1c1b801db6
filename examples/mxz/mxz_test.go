package main

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
	"github.com/blockimage/blockimage/mtcp"
	"github.com/blockimage/blockimage/mtcp/liblzma"
)

func TestMain(m *testing.M) {
	mtcp.Main()
	os.Exit(m.Run())
}

const chunk = mtcp.MinChunkSize

func data(t *testing.T, kind string, n int) []byte {
	t.Helper()
	switch kind {
	case "zeros":
		return make([]byte, n)
	case "random":
		b := make([]byte, n)
		rand.NewChaCha8([32]byte{7}).Read(b)
		return b
	}
	dir := "/usr/bin"
	if kind == "text" {
		dir = "/usr/share/common-licenses"
	}
	names, _ := filepath.Glob(dir + "/*")
	var buf bytes.Buffer
	for buf.Len() < n {
		before := buf.Len()
		for _, name := range names {
			if fi, err := os.Stat(name); err == nil && fi.Mode().IsRegular() && buf.Len() < n {
				b, _ := os.ReadFile(name)
				buf.Write(b)
			}
		}
		if buf.Len() == before {
			t.Fatalf("no %s data in %s", kind, dir)
		}
	}
	return buf.Bytes()[:n]
}

// mxz runs the command in this process with stdin and returns stdout.
func mxz(t *testing.T, stdin []byte, args ...string) []byte {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), args, bytes.NewReader(stdin), &stdout, &stderr); code != 0 {
		t.Fatalf("mxz %v: exit %d: %s", args, code, stderr.Bytes())
	}
	return stdout.Bytes()
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

func codecs() []string {
	if liblzma.Available() {
		return []string{"go", "liblzma"}
	}
	return []string{"go"}
}

// TestRoundTripWithStockXZ: mxz compresses and xz decompresses, and the
// other way round, on real data and on sizes around chunk boundaries.
func TestRoundTripWithStockXZ(t *testing.T) {
	testenv.Require(t, testenv.Commands("xz"))
	bs := "--block-size=" + strconv.Itoa(chunk)
	for _, codec := range codecs() {
		for _, kind := range []string{"binary", "text", "zeros", "random"} {
			for _, n := range []int{0, 1, chunk - 1, chunk, chunk + 1, 3*chunk + 1000} {
				in := data(t, kind, n)
				name := codec + "/" + kind + "/" + strconv.Itoa(n)
				z := mxz(t, in, "-1", "-T2", "--codec", codec, bs)
				xz(t, z, "-t")
				if got := xz(t, z, "-dc"); !bytes.Equal(got, in) {
					t.Fatalf("%s: xz -d of mxz output differs", name)
				}
				if got := mxz(t, xz(t, in, "-1c", "-T2", bs), "-dc"); !bytes.Equal(got, in) {
					t.Fatalf("%s: mxz -d of xz output differs", name)
				}
				if got := mxz(t, z, "-d", "-T1"); !bytes.Equal(got, in) {
					t.Fatalf("%s: mxz -d -T1 of its own output differs", name)
				}
			}
		}
	}
}

// TestFiles: FILE becomes FILE.xz and back, -k keeps, -t checks.
func TestFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	in := data(t, "binary", 2*chunk+3)
	if err := os.WriteFile(path, in, 0o640); err != nil {
		t.Fatal(err)
	}
	mxz(t, nil, "-0", "--codec", "go", "--block-size", strconv.Itoa(chunk), path)
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("%s still exists after compression without -k", path)
	}
	mxz(t, nil, "-t", path+".xz")
	mxz(t, nil, "-dk", path+".xz")
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, in) {
		t.Fatalf("decompressed file: %v, equal %v", err, bytes.Equal(got, in))
	}
	if _, err := os.Stat(path + ".xz"); err != nil {
		t.Fatalf("-k removed the input: %v", err)
	}
	// Existing output without -f is an error, and the input survives.
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"-d", path + ".xz"}, nil, io.Discard, &stderr); code != 1 || !strings.Contains(stderr.String(), "exists") {
		t.Fatalf("decompressing over an existing file: exit %d, %q", code, stderr.String())
	}
	// A corrupt file fails -t.
	z, _ := os.ReadFile(path + ".xz")
	z[len(z)/2] ^= 1
	os.WriteFile(path+".xz", z, 0o600)
	stderr.Reset()
	if code := run(context.Background(), []string{"-t", path + ".xz"}, nil, io.Discard, &stderr); code != 1 {
		t.Fatalf("-t of a corrupt file: exit %d, %q", code, stderr.String())
	}
}

func TestParseArgs(t *testing.T) {
	c, err := parseArgs([]string{"-dkc9", "-T", "3", "--codec=go", "--block-size", "65536", "a", "--", "-b"})
	if err != nil || c.mode != decompressMode || !c.keep || !c.stdout || c.level != 9 || c.threads != 3 ||
		c.codec != "go" || c.blockSize != 65536 || strings.Join(c.files, ",") != "a,-b" {
		t.Fatalf("parseArgs: %+v, %v", c, err)
	}
	if c, err := parseArgs([]string{"-T2", "-t"}); err != nil || c.threads != 2 || c.mode != testMode {
		t.Fatalf("-T2 -t: %+v, %v", c, err)
	}
	for _, bad := range [][]string{{"-x"}, {"-T"}, {"-Tx"}, {"--threads=-1"}, {"--nope"}} {
		if _, err := parseArgs(bad); err == nil {
			t.Errorf("parseArgs(%q) accepted", bad)
		}
	}
}
