package deathsig

import (
	"os/exec"
	"runtime"
	"testing"
	"time"
)

// TestChildOutlivesTheThreadThatAsked checks that a child started by a
// goroutine whose thread then ends (a goroutine that exits locked to its
// thread ends it) lives on: Pdeathsig follows the thread that forked.
// Two children, asked for one after the other: a goroutine that happens
// to run on the main thread wedges it instead of ending it, so the other
// one's thread does end.
func TestChildOutlivesTheThreadThatAsked(t *testing.T) {
	if _, err := exec.LookPath("sleep"); err != nil {
		t.Skip("no sleep command")
	}
	var cmds []*exec.Cmd
	var exits []chan error
	defer func() {
		for i, cmd := range cmds {
			cmd.Process.Kill()
			<-exits[i]
		}
	}()
	for range 2 {
		cmd := exec.Command("sleep", "600")
		started := make(chan error)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
			started <- Start(cmd)
		}()
		if err := <-started; err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		cmds, exits = append(cmds, cmd), append(exits, exited)
	}
	time.Sleep(time.Second) // time for the threads to end
	for i, exited := range exits {
		select {
		case err := <-exited:
			exited <- err // for the deferred wait
			t.Errorf("child %d died with the thread that asked for it: %v", i, err)
		default:
		}
	}
}
