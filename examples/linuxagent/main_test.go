package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEveryCommandHasHelp(t *testing.T) {
	for _, c := range commands {
		var out, errb bytes.Buffer
		if code := run(context.Background(), []string{c.name, "--help"}, &out, &errb); code != 0 {
			t.Errorf("%s --help: exit %d: %s", c.name, code, errb.String())
		}
		if help := strings.ToLower(out.String() + errb.String()); !strings.Contains(help, "usage:") || !strings.Contains(help, c.name) {
			t.Errorf("%s --help printed no usage: %q", c.name, out.String()+errb.String())
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"nosuch"},
		{"backup", "/dev/null"},
		{"backup", "--to", "x"},
		{"backup", "a", "--to", "x", "--mode", "weekly"},
		{"backup", "a", "--to", "x", "--rate-limit", "fast"},
		{"restore", "x"},
	} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage); stderr %s", args, code, errb.String())
		}
	}
}

// An image file needs neither root, nor a tracer, nor a freeze: the
// round trip backup, diff, restore works anywhere.
func TestImageFileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	data := make([]byte, 8<<20)
	for i := range data {
		if (i/65536)%3 == 0 {
			data[i] = byte(i * 7)
		}
	}
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	// The target's directory does not exist yet: the backup creates it.
	dst := filepath.Join(dir, "backups", "host", "backup.img")
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"backup", src, "--to", dst, "--local"}, &out, &errb); code != 0 {
		t.Fatalf("backup: exit %d: %s", code, errb.String())
	}
	// A diff of an unchanged source sends nothing.
	out.Reset()
	if code := run(context.Background(), []string{"backup", src, "--to", dst, "--mode", "diff", "--json", "--local"}, &out, &errb); code != 0 {
		t.Fatalf("diff: exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), `"bytes_sent": 0,`) {
		t.Fatalf("diff of an unchanged image sent data: %s", out.String())
	}
	restored := filepath.Join(dir, "restored.img")
	if code := run(context.Background(), []string{"restore", "--from", dst, restored, "--quiet"}, &out, &errb); code != 0 {
		t.Fatalf("restore: exit %d: %s", code, errb.String())
	}
	got, err := os.ReadFile(restored)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("restored image differs from the source")
	}
	// Restoring over an existing file needs --force.
	if code := run(context.Background(), []string{"restore", "--from", dst, restored}, &out, &errb); code != 1 {
		t.Fatalf("restore over an existing file: exit %d, want 1", code)
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1048576": 1 << 20, "50M": 50 << 20, "1.5G/s": 3 << 29, "200KiB": 200 << 10, "2MB/s": 2 << 20} {
		got, err := parseRate(in)
		if err != nil || got != want {
			t.Errorf("parseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "fast", "-1", "1e30G"} {
		if _, err := parseRate(in); err == nil {
			t.Errorf("parseRate(%q) accepted", in)
		}
	}
}

// Without a daemon, the commands that need one say so plainly.
func TestNoDaemon(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"status"},
		{"cancel", "/dev/sdb1"},
		{"track", "/dev/sdb1"},
		{"backup", "/dev/sdb1", "--to", filepath.Join(dir, "x.img"), "--mode", "incremental"},
	} {
		var out, errb bytes.Buffer
		args = append(args, "--state-dir", dir, "--socket", filepath.Join(dir, "sock"))
		if code := run(context.Background(), args, &out, &errb); code != 1 || !strings.Contains(errb.String(), "no daemon is running") {
			t.Errorf("%v: exit %d, stderr %q; want 1 and 'no daemon is running'", args, code, errb.String())
		}
		// A token from an earlier run, but no daemon on the socket.
		if err := os.WriteFile(filepath.Join(dir, "token"), []byte("abc\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		errb.Reset()
		if code := run(context.Background(), args, &out, &errb); code != 1 || !strings.Contains(errb.String(), "nothing answers on") {
			t.Errorf("%v with a stale token: exit %d, stderr %q", args, code, errb.String())
		}
		os.Remove(filepath.Join(dir, "token"))
	}
}
