package testenv

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

// BaseDir is the directory under which every resource of every test run
// lives: one subdirectory per test process, named run-PID-*. The directory
// is world-traversable because qemu, started by libvirtd as another user,
// must reach guest disks below it.
func BaseDir() string { return filepath.Join(os.TempDir(), "blockimage-testenv") }

var (
	runDirOnce sync.Once
	runDir     string
	runDirErr  error
)

// RunDir returns this test process's own directory under [BaseDir],
// creating it on first use.
func RunDir() (string, error) {
	runDirOnce.Do(func() {
		base := BaseDir()
		if runDirErr = os.MkdirAll(base, 0o755); runDirErr != nil {
			return
		}
		if runDirErr = os.Chmod(base, 0o755); runDirErr != nil {
			return
		}
		runDir, runDirErr = os.MkdirTemp(base, fmt.Sprintf("run-%d-", os.Getpid()))
		if runDirErr == nil {
			runDirErr = os.Chmod(runDir, 0o755)
		}
	})
	return runDir, runDirErr
}

// TempDir returns a new world-traversable directory under [RunDir],
// removed when the test ends.
func TempDir(t testing.TB) string {
	t.Helper()
	root, err := RunDir()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	dir, err := os.MkdirTemp(root, "t-")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// The registry holds the release function of every live resource, so that
// an interrupted test binary can release them from its signal handler,
// where t.Cleanup no longer runs.
var registry = struct {
	sync.Mutex
	next     int
	releases map[int]func()
}{releases: map[int]func(){}}

// track registers release with both t.Cleanup and the interrupt registry;
// it runs exactly once, whichever comes first.
func track(t testing.TB, release func()) {
	var once sync.Once
	registry.Lock()
	id := registry.next
	registry.next++
	registry.releases[id] = func() { once.Do(release) }
	registry.Unlock()
	t.Cleanup(func() {
		registry.Lock()
		delete(registry.releases, id)
		registry.Unlock()
		once.Do(release)
	})
}

// releaseAll runs every registered release, newest first.
func releaseAll() {
	registry.Lock()
	defer registry.Unlock()
	for id := registry.next - 1; id >= 0; id-- {
		if r, ok := registry.releases[id]; ok {
			r()
			delete(registry.releases, id)
		}
	}
}

// Main is the body of an integration test package's TestMain: it releases
// what earlier, killed test processes left behind, runs the tests, and on
// SIGINT or SIGTERM releases this process's resources before exiting.
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
func Main(m *testing.M) {
	Sweep()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "testenv: %v: releasing test resources\n", s)
		releaseAll()
		removeRunDir()
		os.Exit(2)
	}()
	code := m.Run()
	releaseAll()
	removeRunDir()
	os.Exit(code)
}

func removeRunDir() {
	if runDir != "" {
		os.RemoveAll(runDir)
	}
}
