package blockdev

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/blockimage/blockimage/internal/reexec"
	"github.com/blockimage/blockimage/internal/testenv"
	"golang.org/x/sys/unix"
)

// TestSequencerOrderAndWriterBlocked is the main acceptance test, on ext4
// and XFS: data written before Run is on the device by the time the tracer
// is flushed (FIFREEZE wrote the filesystem buffers, BLKFLSBUF the
// device's), the steps run in order, a writer started inside the critical
// section stays blocked while the critical section works and completes
// after the thaw, and the report says how long the freeze lasted.
func TestSequencerOrderAndWriterBlocked(t *testing.T) {
	for _, fstype := range filesystems {
		t.Run(fstype, func(t *testing.T) {
			d := newTestFilesystem(t, fstype)
			marker := make([]byte, 4096)
			rand.Read(marker)
			if err := os.WriteFile(filepath.Join(d.MountPoint, "before"), marker, 0o644); err != nil {
				t.Fatal(err) // dirty in the page cache, not synced
			}
			var steps []string
			var w *writer
			s := &Sequencer{
				Device: d.Path,
				FlushTracer: func(ctx context.Context) error {
					steps = append(steps, "tracer")
					found, err := imageContains(d.Image, marker)
					if err != nil {
						return err
					}
					if !found {
						t.Error("data written before Run is not in the image when the tracer is flushed")
					}
					return nil
				},
			}
			rep, err := s.Run(context.Background(), func(ctx context.Context) error {
				steps = append(steps, "critical")
				if !frozen(t, d.MountPoint) {
					t.Error("not frozen in the critical section")
				}
				w = startWriter(t, d.MountPoint, "during")
				// Real work while the writer tries to write; whatever the
				// timing, a frozen filesystem cannot let it finish.
				if err := readAll(ctx, d.Path); err != nil {
					return err
				}
				if w.completed() {
					t.Error("a writer completed while the filesystem was frozen")
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			w.wait(t) // proceeds after the thaw
			if strings.Join(steps, ",") != "tracer,critical" {
				t.Errorf("steps %q", steps)
			}
			if !rep.Frozen || rep.MountPoint != d.MountPoint || rep.FSType != fstype || rep.Cut {
				t.Errorf("report %+v", rep)
			}
			if rep.FrozenFor < rep.Freeze+rep.FlushBuffers+rep.FlushTracer+rep.Critical+rep.Thaw || rep.Critical <= 0 {
				t.Errorf("frozen for %v, less than its steps: %+v", rep.FrozenFor, rep)
			}
			t.Logf("frozen for %v (freeze %v, BLKFLSBUF %v, tracer %v, critical %v, thaw %v)",
				rep.FrozenFor, rep.Freeze, rep.FlushBuffers, rep.FlushTracer, rep.Critical, rep.Thaw)
		})
	}
}

// TestSequencerDeadlineCutsAndThaws: a critical section that ignores its
// context and waits for a writer, which can only finish if the filesystem
// is thawed under it, is cut at the deadline.
func TestSequencerDeadlineCutsAndThaws(t *testing.T) {
	for _, fstype := range filesystems {
		t.Run(fstype, func(t *testing.T) {
			d := newTestFilesystem(t, fstype)
			s := &Sequencer{Device: d.Path, Deadline: 300 * time.Millisecond}
			var sawCancel error
			rep, err := s.Run(context.Background(), func(ctx context.Context) error {
				w := startWriter(t, d.MountPoint, "during")
				w.wait(t) // only the deadline's thaw lets this return
				<-ctx.Done()
				sawCancel = context.Cause(ctx)
				return nil
			})
			if !errors.Is(err, ErrNotConsistent) {
				t.Fatalf("Run = %v, want ErrNotConsistent", err)
			}
			if !errors.Is(sawCancel, ErrNotConsistent) {
				t.Errorf("critical section's context cause %v", sawCancel)
			}
			if !rep.Cut || !rep.Frozen || rep.FrozenFor < s.Deadline {
				t.Errorf("report %+v", rep)
			}
			if frozen(t, d.MountPoint) {
				t.Error("still frozen")
			}
			t.Logf("%v; frozen for %v", err, rep.FrozenFor)
		})
	}
}

// TestSequencerPanicThaws: a panic in the critical section thaws, then
// reaches the caller with its value.
func TestSequencerPanicThaws(t *testing.T) {
	for _, fstype := range filesystems {
		t.Run(fstype, func(t *testing.T) {
			d := newTestFilesystem(t, fstype)
			s := &Sequencer{Device: d.Path}
			func() {
				defer func() {
					if p := recover(); p != "boom" {
						t.Errorf("recovered %v, want boom", p)
					}
				}()
				s.Run(context.Background(), func(ctx context.Context) error {
					if !frozen(t, d.MountPoint) {
						t.Error("not frozen")
					}
					panic("boom")
				})
				t.Error("Run returned after a panic")
			}()
			if frozen(t, d.MountPoint) {
				t.Fatal("still frozen after a panic")
			}
			w := startWriter(t, d.MountPoint, "after")
			w.wait(t)
		})
	}
}

// TestSequencerErrorsAndCancellation: an error from the critical section
// or the tracer is returned after the thaw; cancelling ctx inside the
// critical section cuts it.
func TestSequencerErrorsAndCancellation(t *testing.T) {
	d := newTestFilesystem(t, "ext4")
	errMine := errors.New("mine")

	_, err := (&Sequencer{Device: d.Path}).Run(context.Background(), func(context.Context) error { return errMine })
	if !errors.Is(err, errMine) || errors.Is(err, ErrNotConsistent) || frozen(t, d.MountPoint) {
		t.Errorf("critical error: %v", err)
	}

	called := false
	_, err = (&Sequencer{Device: d.Path, FlushTracer: func(context.Context) error { return errMine }}).Run(context.Background(),
		func(context.Context) error { called = true; return nil })
	if !errors.Is(err, errMine) || called || frozen(t, d.MountPoint) {
		t.Errorf("tracer error: %v, critical called %v", err, called)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rep, err := (&Sequencer{Device: d.Path}).Run(ctx, func(cctx context.Context) error {
		cancel()
		<-cctx.Done()
		return cctx.Err()
	})
	if !errors.Is(err, ErrNotConsistent) || !errors.Is(err, context.Canceled) || !rep.Cut || frozen(t, d.MountPoint) {
		t.Errorf("cancelled: %v, %+v", err, rep)
	}

	// Someone else thaws during the critical section: the sequencer's own
	// FITHAW finds it thawed, and the copy is not consistent.
	_, err = (&Sequencer{Device: d.Path}).Run(context.Background(), func(context.Context) error {
		out, err := exec.Command("fsfreeze", "--unfreeze", d.MountPoint).CombinedOutput()
		if err != nil {
			t.Errorf("fsfreeze --unfreeze: %v: %s", err, out)
		}
		return nil
	})
	if !errors.Is(err, ErrNotConsistent) || !strings.Contains(err.Error(), "thawed by someone else") {
		t.Errorf("thawed under the sequencer: %v", err)
	}
	// And the watchdog was told not to thaw: by now the filesystem could
	// be frozen again by whoever thawed it, and that freeze is not ours.
	if !strings.Contains(err.Error(), "the watchdog did nothing") {
		t.Errorf("the watchdog tried a thaw of its own after the sequencer found the filesystem thawed: %v", err)
	}

	// Cancelled while the watchdog starts: nothing frozen, and the
	// error says cancelled (errors.Is), not "watchdog unavailable".
	// lateCancel's Err says nil to Run's first look only.
	rep, err = (&Sequencer{Device: d.Path}).Run(newLateCancel(), func(context.Context) error {
		t.Error("critical section ran")
		return nil
	})
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrWatchdog) || rep.Frozen || frozen(t, d.MountPoint) {
		t.Errorf("cancelled while starting: %v, %+v", err, rep)
	}

	// A deadline of "forever": the watchdog's limit (deadline plus
	// grace) must not overflow into a negative duration it rejects.
	if _, err := (&Sequencer{Device: d.Path, Deadline: math.MaxInt64}).Run(context.Background(), func(context.Context) error { return nil }); err != nil {
		t.Errorf("Deadline MaxInt64: %v", err)
	}

	_, err = (&Sequencer{Device: d.Path}).Run(context.Background(), func(context.Context) error {
		runtime.Goexit()
		return nil
	})
	if err == nil || frozen(t, d.MountPoint) {
		t.Errorf("Goexit: %v", err)
	}
}

// TestSequencerBindMountsFrozenOnce: a filesystem mounted twice is frozen
// once (a second FIFREEZE would fail with EBUSY).
func TestSequencerBindMountsFrozenOnce(t *testing.T) {
	d := newTestFilesystem(t, "ext4")
	bind := testenv.TempDir(t)
	if out, err := exec.Command("mount", "--bind", d.MountPoint, bind).CombinedOutput(); err != nil {
		t.Fatalf("mount --bind: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", bind).Run() })
	// Where / is shared (systemd's default), the bind mount joins the
	// original's peer group, and the tmpfs mounted over the original
	// below would propagate to it and hide it too.
	if out, err := exec.Command("mount", "--make-private", bind).CombinedOutput(); err != nil {
		t.Fatalf("mount --make-private: %v: %s", err, out)
	}
	rep, err := (&Sequencer{Device: d.Path}).Run(context.Background(), func(context.Context) error {
		if !frozen(t, bind) {
			t.Error("bind mount not frozen")
		}
		return nil
	})
	if err != nil || !rep.Frozen || rep.MountPoint != d.MountPoint {
		t.Fatalf("%v, %+v", err, rep)
	}

	// Another mount hides the filesystem's root mount: Run freezes
	// through the bind mount instead of failing.
	if out, err := exec.Command("mount", "-t", "tmpfs", "hider", d.MountPoint).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs over %s: %v: %s", d.MountPoint, err, out)
	}
	t.Cleanup(func() { exec.Command("umount", d.MountPoint).Run() })
	rep, err = (&Sequencer{Device: d.Path}).Run(context.Background(), func(context.Context) error {
		if !frozen(t, bind) {
			t.Error("not frozen through the bind mount")
		}
		return nil
	})
	if err != nil || !rep.Frozen || rep.MountPoint != bind {
		t.Fatalf("root mount hidden: %v, %+v", err, rep)
	}
}

// TestSequencerSameFilesystemTwice: a second Sequencer on a filesystem
// the first holds frozen fails with EBUSY, and neither it nor its
// watchdog (armed just before its FIFREEZE) thaws the first one's freeze.
func TestSequencerSameFilesystemTwice(t *testing.T) {
	d := newTestFilesystem(t, "ext4")
	rep, err := (&Sequencer{Device: d.Path}).Run(context.Background(), func(ctx context.Context) error {
		called := false
		rep, err := (&Sequencer{Device: d.Path}).Run(ctx, func(context.Context) error { called = true; return nil })
		if !errors.Is(err, unix.EBUSY) || called || rep.Frozen {
			t.Errorf("second Run = %v, %+v (critical called %v), want EBUSY", err, rep, called)
		}
		// The second Run has returned, its watchdog has exited.
		if !frozen(t, d.MountPoint) {
			t.Error("the second Run thawed the first one's freeze")
		}
		return nil
	})
	if err != nil || !rep.Frozen {
		t.Fatalf("first Run = %v, %+v", err, rep)
	}
	if frozen(t, d.MountPoint) {
		t.Fatal("still frozen")
	}
}

// TestSequencerUnmountedFlushesOnly: no filesystem, no freeze; the flushes
// and the critical section still run.
func TestSequencerUnmountedFlushesOnly(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.LoopDevices)
	loop := testenv.NewLoopDevice(t, 16<<20)
	var steps []string
	rep, err := (&Sequencer{Device: loop.Path, FlushTracer: func(context.Context) error {
		steps = append(steps, "tracer")
		return nil
	}}).Run(context.Background(), func(context.Context) error {
		steps = append(steps, "critical")
		return nil
	})
	if err != nil || rep.Frozen || rep.MountPoint != "" || rep.FrozenFor != 0 || strings.Join(steps, ",") != "tracer,critical" {
		t.Fatalf("%v, %+v, steps %q", err, rep, steps)
	}
}

// TestSequencerRefusesSelf: / and the filesystem of the running binary are
// refused. The / case is checked on a mount table alone: a test must never
// come near freezing the real root.
func TestSequencerRefusesSelf(t *testing.T) {
	if err := refuseSelf(7, 99, []Mount{{MountPoint: "/mnt"}, {MountPoint: "/"}}); !errors.Is(err, ErrRefused) {
		t.Errorf("a filesystem mounted at /: %v", err)
	}
	t.Run("ext4", func(t *testing.T) {
		d := newTestFilesystem(t, "ext4")
		refusesCopyOn(t, d.Path, d.MountPoint)
	})
	// On a btrfs subvolume the binary's st_dev is neither the device's
	// number nor the one mountinfo shows for the filesystem.
	t.Run("btrfs-subvolume", func(t *testing.T) {
		d, sub := newBtrfsSubvolume(t)
		refusesCopyOn(t, d.Path, sub)
	})
}

// refusesCopyOn runs a copy of the test binary placed in dir, on the
// filesystem of device, and checks that it refuses to freeze its own
// filesystem unless AllowSelf.
func refusesCopyOn(t *testing.T, device, dir string) {
	// The running binary is this test binary; a copy of it on the loop
	// filesystem is a binary that would freeze its own filesystem.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "blockdev.test")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd, err := reexec.Command(testRefuser, device)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Path = bin
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "REFUSED") {
		t.Fatalf("copy on the filesystem: %v\n%s", err, out)
	}
	if frozen(t, dir) {
		t.Fatal("frozen")
	}
}

// TestSequencerSIGTERMThaws: a process frozen in its critical section that
// gets SIGTERM thaws by itself (not by its watchdog), then dies of the
// signal as it would have without the freeze.
func TestSequencerSIGTERMThaws(t *testing.T) {
	d := newTestFilesystem(t, "ext4")
	cmd, stderr, exited := startFreezer(t, d.Path, "idle")
	if !frozen(t, d.MountPoint) {
		t.Fatal("helper says frozen, filesystem is not")
	}
	w := startWriter(t, d.MountPoint, "blocked")
	cmd.Process.Signal(syscall.SIGTERM)
	err := <-exited
	w.wait(t)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
		t.Errorf("helper exit %v, want death by SIGTERM; stderr:\n%s", err, stderr)
	}
	log := stderr.String()
	if !strings.Contains(log, "interrupted by a signal") || strings.Contains(log, "watchdog") {
		t.Errorf("helper did not thaw by itself on SIGTERM:\n%s", log)
	}
}

// TestSequencerRefusesDeviceInUse: a whole device whose partition is
// mounted has no filesystem of its own, but it is not idle: Run must not
// treat it as an unmounted device.
func TestSequencerRefusesDeviceInUse(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.LoopDevices, testenv.Commands("partx"), testenv.Mkfs("ext4"), testenv.Mountable("ext4"))
	img := testenv.NewImage(t, 64<<20)
	// An MBR with one Linux partition from sector 2048 to the end.
	mbr := make([]byte, 512)
	entry := mbr[446:]
	entry[4] = 0x83
	binary.LittleEndian.PutUint32(entry[8:], 2048)
	binary.LittleEndian.PutUint32(entry[12:], 64<<20/512-2048)
	mbr[510], mbr[511] = 0x55, 0xaa
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(mbr, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	loop := testenv.AttachLoop(t, img)
	// Partitions added with BLKPG outlive the loop device's detach: delete
	// them before it (this runs after the unmount below), and delete any
	// a killed earlier run left on this loop device first.
	exec.Command("partx", "--delete", loop.Path).Run()
	t.Cleanup(func() {
		if out, err := exec.Command("partx", "--delete", loop.Path).CombinedOutput(); err != nil {
			t.Logf("partx --delete %s: %v: %s", loop.Path, err, out)
		}
	})
	if out, err := exec.Command("partx", "--add", loop.Path).CombinedOutput(); err != nil {
		t.Fatalf("partx --add: %v: %s", err, out)
	}
	part := &testenv.LoopDevice{Path: loop.Path + "p1"}
	part.Mkfs(t, "ext4")
	part.Mount(t)

	called := false
	_, err = (&Sequencer{Device: loop.Path}).Run(context.Background(), func(context.Context) error { called = true; return nil })
	if !errors.Is(err, ErrInUse) || called {
		t.Fatalf("Run on the whole device = %v (critical called %v), want ErrInUse", err, called)
	}
	rep, err := (&Sequencer{Device: part.Path}).Run(context.Background(), func(context.Context) error { return nil })
	if err != nil || !rep.Frozen {
		t.Fatalf("Run on the partition = %v, %+v", err, rep)
	}
}

// TestSequencerDeviceMountedInAnotherNamespace: a filesystem mounted only
// in another mount namespace is invisible in our mountinfo; the exclusive
// open still finds the device busy, so it is not taken for idle.
func TestSequencerDeviceMountedInAnotherNamespace(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.LoopDevices, testenv.Commands("unshare"), testenv.Mkfs("ext4"), testenv.Mountable("ext4"))
	loop := testenv.NewLoopDevice(t, 64<<20)
	loop.Mkfs(t, "ext4")
	mp := testenv.TempDir(t)
	// The mount lives as long as this shell, whose namespace dies with it.
	sh := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount -t ext4 "$0" "$1" && echo mounted && read x`, loop.Path, mp)
	in, err := sh.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := sh.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); sh.Wait() })
	line := make([]byte, 8)
	if _, err := io.ReadFull(out, line); err != nil || string(line) != "mounted\n" {
		t.Fatalf("mount in a new namespace: %q, %v", line, err)
	}
	if ms, err := MountsOf(loop.Path); err != nil || len(ms) != 0 {
		t.Fatalf("the mount is visible here: %+v, %v", ms, err)
	}
	called := false
	_, err = (&Sequencer{Device: loop.Path}).Run(context.Background(), func(context.Context) error { called = true; return nil })
	if !errors.Is(err, ErrInUse) || called {
		t.Fatalf("Run = %v (critical called %v), want ErrInUse", err, called)
	}
	in.Close()
	sh.Wait()
	rep, err := (&Sequencer{Device: loop.Path}).Run(context.Background(), func(context.Context) error { return nil })
	if err != nil || rep.Frozen {
		t.Fatalf("after the namespace is gone: %v, %+v", err, rep)
	}
}

// lateCancel is a context that is done from the start but whose Err
// reports it only from its second call on: cancelled right after Run's
// first check, deterministically.
type lateCancel struct {
	context.Context
	calls atomic.Int32
	done  chan struct{}
}

func newLateCancel() *lateCancel {
	c := &lateCancel{Context: context.Background(), done: make(chan struct{})}
	close(c.done)
	return c
}

func (c *lateCancel) Done() <-chan struct{} { return c.done }

func (c *lateCancel) Err() error {
	if c.calls.Add(1) == 1 {
		return nil
	}
	return context.Canceled
}

// TestSequencerRefusesSwap: an unmounted device that is active swap is
// written to by something Run cannot freeze: ErrInUse, and the critical
// section does not run. (Holders, device-mapper or md, are not tested:
// the test machine's kernel has neither.)
func TestSequencerRefusesSwap(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.LoopDevices, testenv.Commands("mkswap", "swapon", "swapoff"))
	loop := testenv.NewLoopDevice(t, 16<<20)
	if out, err := exec.Command("mkswap", loop.Path).CombinedOutput(); err != nil {
		t.Fatalf("mkswap: %v: %s", err, out)
	}
	if out, err := exec.Command("swapon", loop.Path).CombinedOutput(); err != nil {
		t.Fatalf("swapon: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("swapoff", loop.Path).CombinedOutput(); err != nil {
			t.Errorf("swapoff: %v: %s", err, out)
		}
	})
	called := false
	_, err := (&Sequencer{Device: loop.Path}).Run(context.Background(), func(context.Context) error { called = true; return nil })
	if !errors.Is(err, ErrInUse) || called {
		t.Fatalf("Run = %v (critical called %v), want ErrInUse", err, called)
	}
}
