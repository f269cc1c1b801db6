package agent

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/blockimage/blockimage/blockdev"
	"github.com/blockimage/blockimage/examples/linuxagent/internal/agentapi"
	"github.com/blockimage/blockimage/internal/testenv"
)

// TestEndToEnd is the acceptance test on loop-mounted ext4 and XFS: a
// full backup, then incrementals while files are copied and deleted (and
// fio writes, when installed), with a clean daemon restart and an unclean
// stop in between. At every freeze point a hook copies the raw device;
// the target must equal that copy on every in-use block. Finally the
// image is restored, mounted (which replays the ext4 journal or the XFS
// log), its files compared with the source's, and checked with e2fsck -fn
// or xfs_repair -n.
func TestEndToEnd(t *testing.T) {
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) { endToEnd(t, fs) })
	}
}

func endToEnd(t *testing.T, fstype string) {
	fsck := map[string][]string{"ext4": {"e2fsck", "-fn"}, "xfs": {"xfs_repair", "-n"}}[fstype]
	testenv.Require(t, testenv.Root, testenv.LoopDevices, testenv.Mkfs(fstype), testenv.Mountable(fstype), testenv.Commands(fsck[0], "fsfreeze"))
	testenv.Exclusive(t, "ftrace")
	var mkfsArgs []string
	if fstype == "ext4" {
		// No background zeroing of inode tables: it would write while
		// the daemon is stopped and turn the restart into a diff.
		mkfsArgs = []string{"-E", "lazy_itable_init=0,lazy_journal_init=0"}
	}
	dev := testenv.NewFilesystem(t, fstype, 256<<20, mkfsArgs...)
	files := testenv.FillFiles(t, dev.MountPoint, testenv.FillOptions{Seed: 2, Files: 30, MaxSize: 2 << 20})

	dir := testenv.TempDir(t)
	image := filepath.Join(dir, "backup.img")
	snap := filepath.Join(dir, "freeze-point.img")
	ctx := context.Background()
	opts := DaemonOptions{StateDir: filepath.Join(dir, "state"), Logf: t.Logf, atFreeze: func(ctx context.Context) error {
		return copyDevice(ctx, dev.Path, snap)
	}}
	d := NewDaemon(&System, opts)
	if err := d.Start(ctx, dev.Path); err != nil {
		t.Fatal(err)
	}
	// One program traces at a time (ftrace's blk tracer is one per
	// machine): whatever happens, the daemon of this subtest stops before
	// the next starts.
	t.Cleanup(func() { d.Stop(context.Background()) })
	w := startWorkload(t, dev.MountPoint, files)

	check := func(what string, want agentapi.Mode) agentapi.Result {
		t.Helper()
		res, err := d.run(ctx, agentapi.BackupRequest{Device: dev.Path, Target: image, Mode: want}, nil)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if res.Mode != want {
			t.Fatalf("%s ran as %s: %s", what, res.Mode, res.FallbackReason)
		}
		if !res.Frozen || !res.Consistent {
			t.Fatalf("%s: not frozen: %+v", what, res)
		}
		bad, compared := sameInUse(t, snap, image)
		if bad != 0 {
			t.Fatalf("%s: %d in-use blocks of %d differ from the freeze point", what, bad, compared/4096)
		}
		t.Logf("%s: %d passes, %s sent, frozen %v, %d MiB in use exact", what, res.Passes, fmt.Sprint(res.BytesSent), res.FreezeWindow, compared>>20)
		return res
	}

	check("full", agentapi.Full)
	for i := 1; i <= 10; i++ {
		check(fmt.Sprintf("incremental %d", i), agentapi.Incremental)
		switch i {
		case 4:
			// A clean restart. Nothing may write while no tracer runs,
			// or the daemon rightly falls back to a diff: even after a
			// sync the filesystem writes back its metadata when it
			// likes, so the restart happens inside a freeze (as an
			// operator who wants to keep the chain would do it).
			w.pause(t)
			freezeFS(t, dev.MountPoint, true)
			if err := d.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			d = NewDaemon(&System, opts)
			if err := d.Start(ctx); err != nil {
				t.Fatal(err)
			}
			freezeFS(t, dev.MountPoint, false)
			w.resume()
		case 7:
			// An unclean stop: the tracer dies with the daemon, nothing is
			// saved, and the workload goes on untraced for a while.
			d.abandon()
			w.ops(200)
			d = NewDaemon(&System, opts)
			if err := d.Start(ctx); err != nil {
				t.Fatal(err)
			}
			check("diff after an unclean stop", agentapi.Diff)
		}
	}
	w.stop(t)
	want := testenv.TreeDigest(t, dev.MountPoint)
	check("final incremental", agentapi.Incremental)
	if err := d.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	restored := filepath.Join(dir, "restored.img")
	if _, err := System.Restore(ctx, image, restored, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	// Mounting replays the journal (ext4) or the log (XFS) that the
	// frozen image carries; the check runs on the recovered image.
	rl := testenv.AttachLoop(t, restored)
	rl.FSType = fstype
	var mountOpts []string
	if fstype == "xfs" {
		// The source, still mounted, has the same UUID.
		mountOpts = append(mountOpts, "nouuid")
	}
	mp := rl.Mount(t, mountOpts...)
	got := testenv.TreeDigest(t, mp)
	rl.Unmount(t)
	if d := testenv.TreeDiff(want, got); d != "" {
		t.Fatalf("restored tree against the source: %s", d)
	}
	if out, err := exec.Command(fsck[0], append(fsck[1:], rl.Path)...).CombinedOutput(); err != nil {
		t.Fatalf("%s on the restored image: %v\n%s", fsck[0], err, out)
	}
}

// abandon simulates a daemon killed: its tracers stop (their kernel side
// goes with the process) and nothing is saved; the running marker stays.
func (d *Daemon) abandon() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, t := range d.devs {
		if t.tracer != nil {
			t.tracer.Stop()
			t.tracer = nil
		}
	}
}

// copyDevice copies the raw device to path, bypassing the page cache.
func copyDevice(ctx context.Context, device, path string) error {
	src, err := blockdev.Open(device, os.O_RDONLY|directIfDevice(device))
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.Create(path)
	if err != nil {
		return err
	}
	defer dst.Close()
	if _, err := io.Copy(dst, io.NewSectionReader(src, 0, src.Size())); err != nil {
		return err
	}
	return dst.Close()
}

// workload copies and deletes files on the filesystem under test, and runs
// fio's random writes beside when fio is installed.
type workload struct {
	mp     string
	files  []string
	rng    *rand.Rand
	n      int
	mu     sync.Mutex // held while paused
	paused bool
	quit   chan struct{}
	done   chan struct{}
	fio    *exec.Cmd
}

func startWorkload(t *testing.T, mp string, files []string) *workload {
	w := &workload{mp: mp, files: files, rng: rand.New(rand.NewPCG(3, 3)), quit: make(chan struct{}), done: make(chan struct{})}
	if err := os.MkdirAll(filepath.Join(mp, "work"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("fio"); err == nil {
		// --thread: one process, so that SIGSTOP and SIGKILL reach the
		// writers too.
		w.fio = exec.Command("fio", "--name=agent", "--thread", "--directory="+mp, "--size=32M", "--rw=randwrite", "--bs=4k",
			"--ioengine=psync", "--fsync=64", "--rate=4m", "--time_based", "--runtime=3600")
		if err := w.fio.Start(); err != nil {
			t.Fatal(err)
		}
	}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.quit:
				return
			default:
			}
			w.mu.Lock()
			w.step()
			w.mu.Unlock()
			time.Sleep(2 * time.Millisecond) // pace, not synchronisation
		}
	}()
	t.Cleanup(func() { w.stop(t) })
	return w
}

// step copies a source file into work/ or deletes a copy.
func (w *workload) step() {
	w.n++
	dst := filepath.Join(w.mp, "work", fmt.Sprintf("c%03d", w.rng.IntN(40)))
	if w.rng.IntN(3) == 0 {
		os.Remove(dst)
		return
	}
	data, err := os.ReadFile(w.files[w.rng.IntN(len(w.files))])
	if err == nil {
		os.WriteFile(dst, data, 0o644)
	}
}

// ops runs n steps on the caller's goroutine (the workload may run too).
func (w *workload) ops(n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for range n {
		w.step()
	}
}

// pause stops every writer.
func (w *workload) pause(t *testing.T) {
	w.mu.Lock()
	w.paused = true
	if w.fio != nil {
		w.fio.Process.Signal(stopSignal)
	}
}

func (w *workload) resume() {
	if w.fio != nil {
		w.fio.Process.Signal(contSignal)
	}
	w.paused = false
	w.mu.Unlock()
}

func (w *workload) stop(t *testing.T) {
	select {
	case <-w.quit:
		return
	default:
	}
	if w.paused { // a test that failed while paused
		w.resume()
	}
	close(w.quit)
	<-w.done
	if w.fio != nil {
		w.fio.Process.Kill()
		w.fio.Wait()
	}
	syncFS(t, w.mp)
}
