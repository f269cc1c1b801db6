package agent

import (
	"os"
	"os/exec"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

var stopSignal, contSignal = syscall.SIGSTOP, syscall.SIGCONT

func syncFS(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
}

// freezeFS freezes (or thaws) the filesystem mounted at dir with
// fsfreeze(8); testenv thaws it if the test fails first.
func freezeFS(t *testing.T, dir string, freeze bool) {
	t.Helper()
	flag := "--unfreeze"
	if freeze {
		flag = "--freeze"
	}
	if out, err := exec.Command("fsfreeze", flag, dir).CombinedOutput(); err != nil {
		t.Fatalf("fsfreeze %s %s: %v: %s", flag, dir, err, out)
	}
}
