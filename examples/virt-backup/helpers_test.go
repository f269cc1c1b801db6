package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockimage/blockimage/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds virt-backup once per test process, as a user would.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := testenv.RunDir()
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "virt-backup")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = err
			binPath = string(out)
		}
	})
	if buildErr != nil {
		t.Fatalf("go build: %v: %s", buildErr, binPath)
	}
	return binPath
}

type result struct {
	code           int
	stdout, stderr string
	summary        summary
}

// vb runs the built binary with args; with --json among them the summary
// is decoded.
func vb(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.CommandContext(context.Background(), binary(t), args...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	start := time.Now()
	err := cmd.Run()
	t.Logf("virt-backup %s: %.1fs", args[0], time.Since(start).Seconds())
	r := result{stdout: so.String(), stderr: se.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running virt-backup: %v", err)
	}
	for _, a := range args {
		if a == "--json" && r.code != exitUsage {
			if err := json.Unmarshal(so.Bytes(), &r.summary); err != nil {
				t.Fatalf("virt-backup %s: bad JSON summary: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, so.String(), se.String())
			}
		}
	}
	return r
}

func (r result) domain(t *testing.T, name string) domainResult {
	t.Helper()
	for _, d := range r.summary.Domains {
		if d.Name == name {
			return d
		}
	}
	t.Fatalf("no domain %s in summary %+v", name, r.summary)
	return domainResult{}
}

func mustCode(t *testing.T, r result, code int, args ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("virt-backup %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, code, r.stdout, r.stderr)
	}
}

func runOK(t *testing.T, code int, args ...string) result {
	t.Helper()
	r := vb(t, args...)
	mustCode(t, r, code, args...)
	return r
}

// qemuImgCompare fails the test unless the two images have the same
// guest-visible content.
func qemuImgCompare(t *testing.T, format, a, b string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "compare", "-U", "-f", format, "-F", format, a, b).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img compare %s %s: %v: %s", a, b, err, out)
	}
}

func state(t *testing.T, name string) string {
	t.Helper()
	defer logTime(t, "domstate")()
	return strings.TrimSpace(testenv.Virsh(t, "domstate", name))
}

// forget destroys and undefines a domain the test made, as after losing
// the host, so that a restore may define it again.
func forget(t *testing.T, name string) {
	t.Helper()
	defer logTime(t, "forget "+name)()
	if state(t, name) != "shut off" {
		testenv.Virsh(t, "destroy", name)
	}
	testenv.Virsh(t, "undefine", name, "--managed-save")
}

// listDir returns the names in dir (none when it does not exist).
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// copyTree copies a backup folder, keeping holes.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", "--sparse=always", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
}

func logTime(t *testing.T, what string) func() {
	start := time.Now()
	return func() { t.Logf("%s: %.1fs", what, time.Since(start).Seconds()) }
}
