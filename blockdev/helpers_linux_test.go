package blockdev

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockimage/blockimage/internal/reexec"
	"golang.org/x/sys/unix"
)

// testFreezer is a test helper process: it freezes the filesystem on
// os.Args[1] with a Sequencer, says "frozen" on stdout inside the critical
// section, and waits there to be signalled or killed. With os.Args[2] ==
// "stuck" a goroutine also writes to the frozen filesystem first, so a
// thread of the process is blocked in the kernel when it is killed; with
// "stop" it stops itself (SIGSTOP) after saying "frozen".
const testFreezer = "blockdev-test-freezer"

// testRefuser runs from a copy of the test binary on the filesystem it
// tries to freeze (os.Args[1]): Run must refuse, unless AllowSelf.
const testRefuser = "blockdev-test-refuser"

func init() {
	reexec.Register(testRefuser, func() {
		dev := os.Args[1]
		_, err := (&Sequencer{Device: dev}).Run(context.Background(), func(context.Context) error { return nil })
		if !errors.Is(err, ErrRefused) {
			fmt.Printf("Run = %v, want ErrRefused\n", err)
			os.Exit(1)
		}
		_, err = (&Sequencer{Device: dev, AllowSelf: true}).Run(context.Background(), func(context.Context) error { return nil })
		if err != nil {
			fmt.Printf("with AllowSelf: %v\n", err)
			os.Exit(1)
		}
		fmt.Println("REFUSED")
	})
	reexec.Register(testFreezer, func() {
		dev, mode := os.Args[1], os.Args[2]
		s := &Sequencer{
			Device:   dev,
			Deadline: time.Minute, // the watchdog's timer must not be what thaws
			Logf:     func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) },
		}
		if mode == "stop" { // stops itself in the critical section
			// The deadline only has to outlast the way from FIFREEZE
			// to the SIGSTOP below, in this process.
			s.Deadline, s.WatchdogGrace = time.Second, 100*time.Millisecond
		}
		_, err := s.Run(context.Background(), func(ctx context.Context) error {
			if mode == "stuck" {
				mounts, _ := MountsOf(dev)
				go os.WriteFile(filepath.Join(mounts[0].MountPoint, "stuck"), []byte("x"), 0o644)
				// Wait until that write is blocked in the kernel, so that
				// the kill finds a thread that cannot exit.
				if err := waitThreadBlocked(ctx); err != nil {
					return err
				}
			}
			os.Stdout.WriteString("frozen\n")
			if mode == "stop" {
				// Hung: neither thawing nor dying. Stopping itself,
				// rather than being stopped by the test, does not race
				// with its own deadline.
				syscall.Kill(os.Getpid(), syscall.SIGSTOP)
			}
			<-ctx.Done()
			return ctx.Err()
		})
		fmt.Fprintf(os.Stderr, "freezer: Run returned %v\n", err)
		os.Exit(3)
	})
}

// waitThreadBlocked waits until a thread of this process is in
// uninterruptible sleep (D), as a writer on a frozen filesystem is.
func waitThreadBlocked(ctx context.Context) error {
	for ctx.Err() == nil {
		tasks, _ := filepath.Glob("/proc/self/task/*/stat")
		for _, p := range tasks {
			if b, err := os.ReadFile(p); err == nil {
				if i := strings.LastIndexByte(string(b), ')'); i > 0 && i+2 < len(b) && b[i+2] == 'D' {
					return nil
				}
			}
		}
		time.Sleep(time.Millisecond) // polling the condition, not waiting for it to happen
	}
	return ctx.Err()
}

// startFreezer starts the helper and waits until it is inside the
// critical section.
func startFreezer(t *testing.T, device, mode string) (*exec.Cmd, *strings.Builder, <-chan error) {
	t.Helper()
	cmd, err := reexec.Command(testFreezer, device, mode)
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	line, rerr := bufio.NewReader(out).ReadString('\n')
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	if rerr != nil || line != "frozen\n" {
		cmd.Process.Kill()
		t.Fatalf("freezer did not freeze: %q, %v; exit %v; stderr:\n%s", line, rerr, <-exited, stderr.String())
	}
	return cmd, &stderr, exited
}

// writer is a process writing a file on a filesystem and fsyncing it: the
// stock dd, so the blocked writer is not our code.
type writer struct {
	path string
	done chan error
}

func startWriter(t *testing.T, dir, name string) *writer {
	t.Helper()
	w := &writer{path: filepath.Join(dir, name), done: make(chan error, 1)}
	cmd := exec.Command("dd", "if=/dev/urandom", "of="+w.path, "bs=64k", "count=4", "conv=fsync", "status=none")
	if err := cmd.Start(); err != nil {
		w.done <- err // reported by wait
		return w
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	go func() { w.done <- cmd.Wait() }()
	return w
}

// completed reports, without waiting, whether the writer has finished.
func (w *writer) completed() bool {
	select {
	case err := <-w.done:
		w.done <- err
		return true
	default:
		return false
	}
}

// wait waits for the writer and checks it wrote the whole file. It may
// run in a critical section, off the test's goroutine, so it reports with
// t.Errorf.
func (w *writer) wait(t *testing.T) {
	t.Helper()
	err := <-w.done
	w.done <- err
	if err != nil {
		t.Errorf("writer: %v", err)
		return
	}
	if st, err := os.Stat(w.path); err != nil || st.Size() != 4*64<<10 {
		t.Errorf("writer's file: %v, %v", st, err)
	}
}

// frozen reports whether the filesystem at mp is frozen, by trying to
// freeze it: EBUSY means it is. If the probe froze it, it thaws it again.
// It may run in a critical section, so it reports with t.Errorf.
func frozen(t *testing.T, mp string) bool {
	t.Helper()
	dir, err := os.Open(mp)
	if err != nil {
		t.Errorf("probe: %v", err)
		return false
	}
	defer dir.Close()
	err = Freeze(dir)
	if errors.Is(err, unix.EBUSY) {
		return true
	}
	if err != nil {
		t.Errorf("probe freeze: %v", err)
		return false
	}
	if err := Thaw(dir); err != nil {
		t.Errorf("probe thaw: %v", err)
	}
	return false
}

// readAll reads the first 16 MiB of the device with O_DIRECT, some real
// work for a critical section.
func readAll(ctx context.Context, dev string) error {
	d, err := Open(dev, os.O_RDONLY|unix.O_DIRECT)
	if err != nil {
		return err
	}
	defer d.Close()
	_, err = io.CopyBuffer(io.Discard, io.NewSectionReader(d, 0, min(d.Size(), 16<<20)), AlignedBuffer(1<<20, 4096))
	return err
}

var filesystems = []string{"ext4", "xfs"}

// imageContains reports whether the sparse image file holds data, in its
// allocated parts only (SEEK_DATA, SEEK_HOLE).
func imageContains(path string, data []byte) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	fd := int(f.Fd())
	var off int64
	for {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return false, err
		}
		buf := make([]byte, end-start)
		if _, err := f.ReadAt(buf, start); err != nil && err != io.EOF {
			return false, err
		}
		if bytes.Contains(buf, data) {
			return true, nil
		}
		off = end
	}
}
