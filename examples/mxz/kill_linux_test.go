package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockimage/blockimage/internal/testenv"
)

// children lists the child processes of pid from /proc.
func children(pid int) []int {
	tasks, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/children")
	var out []int
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(s); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// TestSIGKILLChild runs the real mxz binary on a pipe, kills one of its
// compression children with SIGKILL while the input is half written, and
// checks the output is still complete and byte-exact.
func TestSIGKILLChild(t *testing.T) {
	testenv.Require(t, testenv.Commands("xz", "go"))
	bin := filepath.Join(t.TempDir(), "mxz")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	in := data(t, "binary", 6<<20+12345)
	cmd := exec.Command(bin, "-1", "-T2", "--codec", "go", "--block-size", "1048576", "-c")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	half := len(in) / 2
	if _, err := stdin.Write(in[:half]); err != nil {
		t.Fatal(err)
	}
	// Three full chunks are in; wait for the pool to have started its
	// children (polling /proc, bounded far above any normal start).
	var victim int
	for deadline := time.Now().Add(time.Minute); victim == 0; {
		if kids := children(cmd.Process.Pid); len(kids) > 0 {
			victim = kids[0]
		} else if time.Now().After(deadline) {
			t.Fatal("mxz started no child within a minute")
		} else {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %d: %v", victim, err)
	}
	if _, err := stdin.Write(in[half:]); err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("mxz: %v\n%s", err, stderr.Bytes())
	}
	if !strings.Contains(stderr.String(), "child "+strconv.Itoa(victim)+" died") {
		t.Fatalf("mxz did not report child %d's death: %q", victim, stderr.String())
	}
	if got := xz(t, stdout.Bytes(), "-dc"); !bytes.Equal(got, in) {
		t.Fatalf("after the SIGKILL, xz -d gives %d bytes that differ from the %d input", len(got), len(in))
	}
}
