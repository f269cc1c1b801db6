package blockdev

import (
	"strings"
	"syscall"
	"testing"
	"time"
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
	for _, c := range []struct{ fstype, mode string }{{"ext4", "idle"}, {"ext4", "stuck"}, {"xfs", "idle"}} {
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
			if frozen(t, d.MountPoint) {
				t.Error("still frozen")
			}
			t.Logf("writable again %v after SIGKILL (%s)", delay, strings.TrimSpace(stderr.String()))
		})
	}
}

// TestWatchdogDeadline stops (SIGSTOP) the process holding a freeze, so it
// neither thaws nor dies: the watchdog thaws when deadline plus grace have
// passed.
func TestWatchdogDeadline(t *testing.T) {
	d := newTestFilesystem(t, "ext4")
	cmd, stderr, exited := startFreezer(t, d.Path, "short")
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	w := startWriter(t, d.MountPoint, "blocked")
	w.wait(t)
	cmd.Process.Signal(syscall.SIGKILL)
	<-exited
	if !strings.Contains(stderr.String(), "passed since the freeze") {
		t.Errorf("the watchdog's deadline did not thaw:\n%s", stderr)
	}
}
