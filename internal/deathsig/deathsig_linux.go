package deathsig

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

// Start starts cmd with Pdeathsig SIGKILL, keeping the rest of its
// SysProcAttr.
//
// The kernel sends Pdeathsig when the thread that started the child ends,
// not the process, and Go ends a thread whenever a goroutine exits while
// locked to it, which code anywhere in the program may do. Children are
// therefore started from one thread kept for that, which lives as long as
// the process.
func Start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	forker.once.Do(func() {
		forker.reqs = make(chan request)
		go func() {
			runtime.LockOSThread() // never unlocked: the children's parent thread
			for r := range forker.reqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	forker.reqs <- request{cmd: cmd, done: done}
	return <-done
}

var forker struct {
	once sync.Once
	reqs chan request
}

type request struct {
	cmd  *exec.Cmd
	done chan error
}
