// Package reexec runs parts of a program as child processes of itself. Go
// cannot fork without exec, so a package that needs a child process (the
// freeze watchdog in blockdev, the compressors in mtcp) registers a
// function under a name, and the child is the same binary started again
// with that name in its environment; [Init], called first thing in main
// (and in TestMain), runs the function instead of the program.
//
// Public packages expose Init through their own Main functions
// (blockdev.Main, mtcp.Main); calling any one of them serves every
// registered child, and calling several is harmless.
package reexec

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
)

// envName carries the registered name to the child.
const envName = "BLOCKIMAGE_REEXEC"

var (
	mu       sync.Mutex
	registry = map[string]func(){}
)

// Register makes fn runnable as a child under name. Call it from an init
// function; a name registered twice is a programming error and panics.
func Register(name string, fn func()) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := registry[name]; dup {
		panic("reexec: " + name + " registered twice")
	}
	registry[name] = fn
}

// Init runs the registered function and exits if this process was started
// by [Command]; otherwise it returns false at once and the program goes on.
// A child whose name is not registered (a binary that does not import the
// package that started it) exits with status 2 and a message.
func Init() bool {
	name, ok := os.LookupEnv(envName)
	if !ok {
		return false
	}
	os.Unsetenv(envName)
	mu.Lock()
	fn, ok := registry[name]
	mu.Unlock()
	if !ok {
		fmt.Fprintf(os.Stderr, "reexec: this binary has no child %q registered\n", name)
		os.Exit(2)
	}
	fn()
	os.Exit(0)
	return true
}

// Command returns a command that starts this binary as the child registered
// under name, with args as its arguments (os.Args[1:] in the child). The
// caller sets up pipes, SysProcAttr (Pdeathsig where the child must die
// with its parent) and starts it.
func Command(name string, args ...string) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("reexec: locating own binary: %w", err)
	}
	cmd := exec.Command(self, args...)
	cmd.Args[0] = os.Args[0] + " [" + name + "]"
	cmd.Env = append(os.Environ(), envName+"="+name)
	return cmd, nil
}
