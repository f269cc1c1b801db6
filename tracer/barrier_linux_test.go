package tracer

import (
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMarkerWriteKeepsItsThread checks that writing a barrier marker
// gives the thread back as it found it: its CPU affinity restored and the
// thread alive after the goroutine ends. A thread that ended would take
// every child it had started with Pdeathsig with it (it did: qemu-nbd
// servers of the agent's tests were killed mid-test).
func TestMarkerWriteKeepsItsThread(t *testing.T) {
	if _, err := exec.LookPath("sleep"); err != nil {
		t.Skip("no sleep command")
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	m := &markers{fd: p[1]}

	type result struct {
		before, after unix.CPUSet
		err           error
		cmd           *exec.Cmd
	}
	res := make(chan result)
	go func() {
		// This goroutine owns one thread until it ends: the child
		// below dies when that thread does.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var r result
		r.cmd = exec.Command("sleep", "600")
		r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if r.err = r.cmd.Start(); r.err != nil {
			res <- r
			return
		}
		unix.SchedGetaffinity(0, &r.before)
		r.err = m.writeOn(0, []byte("marker"))
		unix.SchedGetaffinity(0, &r.after)
		res <- r
	}()
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	exited := make(chan error, 1)
	go func() { exited <- r.cmd.Wait() }()
	dead := false
	defer func() {
		if !dead {
			r.cmd.Process.Kill()
			<-exited
		}
	}()
	if r.before != r.after {
		t.Fatalf("CPU affinity %v after the marker, %v before", r.after, r.before)
	}
	buf := make([]byte, 16)
	if n, _ := unix.Read(p[0], buf); string(buf[:n]) != "marker" {
		t.Fatalf("marker file got %q", buf[:n])
	}
	// The goroutine has ended. Had writeOn left the thread locked, the
	// runtime would end the thread now, and the child with it.
	select {
	case err := <-exited:
		dead = true
		t.Fatalf("the child started from the marker's thread died: %v", err)
	case <-time.After(time.Second):
	}
}
