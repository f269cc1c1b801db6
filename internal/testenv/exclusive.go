package testenv

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// Exclusive holds a lock named name, shared by every test process on the
// machine, until the test ends. Tests that use a machine-wide facility
// (ftrace's current tracer, for one) take it, because `go test ./...`
// runs several packages' tests at once.
func Exclusive(t testing.TB, name string) {
	t.Helper()
	if err := os.MkdirAll(BaseDir(), 0o755); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	f, err := os.OpenFile(filepath.Join(BaseDir(), name+".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		t.Fatalf("testenv: locking %s: %v", name, err)
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock
}
