package blockdev

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestWatchdogThawsAfterSIGKILL kills the process holding a freeze with
// SIGKILL, which runs none of its code, and observes a blocked writer
// complete: the watchdog thawed. "idle" kills a process waiting in its
// critical section; "stuck" one with a thread blocked writing to the
// frozen filesystem, which keeps the killed process (and its end of the
// watchdog's pipe) alive until the thaw, so the watchdog must notice the
// kill itself. The delay from kill to completed write is logged, not
// asserted; the package documentation states its bound.
func TestWatchdogThawsAfterSIGKILL(t *testing.T) {
	for _, c := range []struct{ fstype, mode string }{{"ext4", "idle"}, {"ext4", "stuck"}, {"xfs", "idle"}, {"btrfs", "idle"}} {
		t.Run(c.fstype+"-"+c.mode, func(t *testing.T) {
			d := newTestFilesystem(t, c.fstype)
			cmd, stderr, exited := startFreezer(t, d.Path, c.mode)
			if !frozen(t, d.MountPoint) {
				t.Fatal("helper says frozen, filesystem is not")
			}
			w := startWriter(t, d.MountPoint, "blocked")
			if w.completed() {
				t.Fatal("writer completed on a frozen filesystem")
			}
			killed := time.Now()
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			w.wait(t)
			delay := time.Since(killed)
			err := <-exited
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
				t.Errorf("helper exit %v, want SIGKILL", err)
			}
			if !strings.Contains(stderr.String(), "blockdev watchdog:") {
				t.Errorf("the watchdog did not say it thawed:\n%s", stderr)
			}
			// The bound after a kill is the watchdog's noticing the
			// death (pipe closed, /proc), not its timer: that one
			// (Deadline a minute, plus grace) is the bound for a hung
			// process, tested by TestWatchdogDeadline.
			if strings.Contains(stderr.String(), "passed since the freeze") {
				t.Errorf("the watchdog thawed on its timer, not on the death of its parent:\n%s", stderr)
			}
			if frozen(t, d.MountPoint) {
				t.Error("still frozen")
			}
			t.Logf("writable again %v after SIGKILL (%s)", delay, strings.TrimSpace(stderr.String()))
		})
	}
}

// TestWatchdogDeadline: the process holding a freeze stops (SIGSTOP), so
// it neither thaws nor dies: the watchdog thaws when deadline plus grace
// have passed.
func TestWatchdogDeadline(t *testing.T) {
	d := newTestFilesystem(t, "ext4")
	cmd, stderr, exited := startFreezer(t, d.Path, "stop")
	w := startWriter(t, d.MountPoint, "blocked")
	w.wait(t)
	cmd.Process.Signal(syscall.SIGKILL)
	<-exited
	if !strings.Contains(stderr.String(), "passed since the freeze") {
		t.Errorf("the watchdog's deadline did not thaw:\n%s", stderr)
	}
}

// TestSequencerWatchdogGoneWhileFrozen: the watchdog ends while the
// critical section runs. Killed with SIGKILL (no thaw of its own), Run
// thaws at once and says the watchdog is gone; sent SIGTERM (it thaws and
// exits), Run cuts the critical section and does not FITHAW again, which
// could end a freeze someone else took after the watchdog's thaw. Neither
// waits for the deadline (a minute): the critical section's context is
// cancelled for the watchdog's exit, not for the deadline.
func TestSequencerWatchdogGoneWhileFrozen(t *testing.T) {
	for _, c := range []struct {
		sig  syscall.Signal
		want string
	}{{syscall.SIGKILL, "it exited while the filesystem was frozen"}, {syscall.SIGTERM, "the watchdog thawed it"}} {
		t.Run(c.sig.String(), func(t *testing.T) {
			d := newTestFilesystem(t, "ext4")
			var cause error
			rep, err := (&Sequencer{Device: d.Path, Deadline: time.Minute}).Run(context.Background(), func(ctx context.Context) error {
				pid := watchdogPID(t)
				if pid == 0 {
					return errors.New("no watchdog child found")
				}
				if err := syscall.Kill(pid, c.sig); err != nil {
					return err
				}
				<-ctx.Done()
				cause = context.Cause(ctx)
				return ctx.Err()
			})
			if !errors.Is(err, ErrNotConsistent) || !strings.Contains(err.Error(), c.want) || !rep.Cut {
				t.Errorf("Run = %v, %+v; want ErrNotConsistent saying %q", err, rep, c.want)
			}
			if c.sig == syscall.SIGKILL && !errors.Is(err, ErrWatchdog) {
				t.Errorf("Run = %v, want ErrWatchdog", err)
			}
			if errors.Is(cause, errOverrun) {
				t.Errorf("the critical section was cut by the deadline, not by the watchdog's exit: %v", cause)
			}
			if frozen(t, d.MountPoint) {
				t.Error("still frozen")
			}
			startWriter(t, d.MountPoint, "after").wait(t)
		})
	}
}

// watchdogPID finds the watchdog child of this process in /proc, or 0.
func watchdogPID(t *testing.T) int {
	t.Helper()
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:])) // state, ppid, ...
		if len(f) < 2 || f[1] != strconv.Itoa(os.Getpid()) {
			continue
		}
		dir := filepath.Dir(p)
		cmdline, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		if strings.Contains(string(cmdline), "["+watchdogName+"]") {
			pid, _ := strconv.Atoi(filepath.Base(dir))
			return pid
		}
	}
	return 0
}

// TestWatchdogShielded: as the package documentation says, the watchdog
// runs in a process group of its own (a Ctrl-C on the terminal reaches
// the parent, which thaws, and not the watchdog) and shielded from the OOM
// killer; and one never armed exits when its pipe closes without touching
// the filesystem.
func TestWatchdogShielded(t *testing.T) {
	d := newTestFilesystem(t, "ext4")
	mounts, err := MountsOf(d.Path)
	if err != nil || len(mounts) != 1 {
		t.Fatalf("MountsOf = %+v, %v", mounts, err)
	}
	wd, err := startWatchdog(context.Background(), mounts[0], time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	pid := wd.cmd.Process.Pid
	if pgid, err := syscall.Getpgid(pid); err != nil || pgid != pid {
		t.Errorf("watchdog %d in process group %d (%v), want its own", pid, pgid, err)
	}
	adj, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/oom_score_adj")
	switch {
	case err != nil:
		t.Error(err)
	case hasCapSysResource(t):
		if strings.TrimSpace(string(adj)) != "-1000" {
			t.Errorf("watchdog oom_score_adj %q, want -1000", adj)
		}
	default:
		t.Logf("without CAP_SYS_RESOURCE the watchdog cannot lower its oom_score_adj (%q)", strings.TrimSpace(string(adj)))
	}
	wd.release()
	if code := wd.cmd.ProcessState.ExitCode(); code != wdExitDone {
		t.Errorf("unarmed watchdog exited with %d (%s), want %d", code, wd.note(code), wdExitDone)
	}
}

// hasCapSysResource reports whether this process has CAP_SYS_RESOURCE,
// which lowering oom_score_adj needs (containers often drop it).
func hasCapSysResource(t *testing.T) bool {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return caps&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	t.Fatal("no CapEff in /proc/self/status")
	return false
}

// TestWatchdogArmedNeverTold: a parent that hangs between its FIFREEZE
// and telling the watchdog it froze (or whose FIFREEZE outlasts the whole
// limit) does not leave the filesystem frozen: the limit already runs from
// the moment the watchdog is armed. This test is that parent: it arms the
// watchdog, freezes, and says nothing more.
func TestWatchdogArmedNeverTold(t *testing.T) {
	d := newTestFilesystem(t, "ext4")
	mounts, err := MountsOf(d.Path)
	if err != nil || len(mounts) != 1 {
		t.Fatalf("MountsOf = %+v, %v", mounts, err)
	}
	wd, err := startWatchdog(context.Background(), mounts[0], 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer wd.release()
	dir, err := os.Open(d.MountPoint)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	if err := wd.arm(); err != nil {
		t.Fatal(err)
	}
	if err := Freeze(dir); err != nil {
		t.Fatal(err)
	}
	<-wd.exited
	if code := wd.cmd.ProcessState.ExitCode(); code != wdExitThawed {
		t.Errorf("watchdog exited with %d (%s), want %d (thawed)", code, wd.note(code), wdExitThawed)
	}
	if frozen(t, d.MountPoint) {
		t.Error("still frozen")
	}
}

// TestWatchdogDismissedAtThaw: after the deadline's thaw the critical
// section may take long to return; meanwhile someone else freezes the
// filesystem. The watchdog must be gone by then, not wait for its own
// limit and thaw that freeze.
func TestWatchdogDismissedAtThaw(t *testing.T) {
	d := newTestFilesystem(t, "ext4")
	s := &Sequencer{Device: d.Path, Deadline: 200 * time.Millisecond, WatchdogGrace: 100 * time.Millisecond}
	_, err := s.Run(context.Background(), func(ctx context.Context) error {
		pid := watchdogPID(t)
		if pid == 0 {
			return errors.New("no watchdog child found")
		}
		<-ctx.Done()                  // the deadline
		for frozen(t, d.MountPoint) { // until Run has thawed
			time.Sleep(time.Millisecond) // polling the condition
		}
		dir, err := os.Open(d.MountPoint)
		if err != nil {
			return err
		}
		defer dir.Close()
		if err := Freeze(dir); err != nil { // someone else's freeze
			t.Errorf("freeze after the sequencer's thaw: %v", err)
			return err
		}
		defer Thaw(dir)
		// Until the watchdog has exited, whenever that is.
		for {
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
				break
			}
			time.Sleep(time.Millisecond) // polling the condition
		}
		if !frozen(t, d.MountPoint) {
			t.Error("the watchdog thawed a freeze taken after the sequencer's thaw")
		}
		return nil
	})
	if !errors.Is(err, ErrNotConsistent) {
		t.Fatalf("Run = %v, want ErrNotConsistent", err)
	}
}
