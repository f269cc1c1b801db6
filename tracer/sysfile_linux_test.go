package tracer

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSysFileReadsAfresh(t *testing.T) {
	for _, raw := range []bool{false, true} {
		p := filepath.Join(t.TempDir(), "setting")
		long := strings.Repeat("0123456789abcdef", 200) // beyond the first buffer
		if err := os.WriteFile(p, []byte(long+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		f := newSysFile(p)
		f.raw = raw
		t.Cleanup(f.close)
		if got, err := f.read(); err != nil || got != long {
			t.Fatalf("raw %v: read %d bytes, %v; want %d", raw, len(got), err, len(long))
		}
		if err := os.WriteFile(p, []byte(" 50\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if got, err := f.read(); err != nil || got != "50" {
			t.Fatalf("raw %v: read after a change %q, %v; want 50", raw, got, err)
		}
	}
	f := newSysFile(filepath.Join(t.TempDir(), "missing"))
	if _, err := f.read(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("read of a missing file: %v, want ErrNotExist", err)
	}
}
