package blockdev

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/blockimage/blockimage/internal/reexec"
	"golang.org/x/sys/unix"
)

// The watchdog is a child process (this binary, re-executed through
// internal/reexec) that holds the mount point open and thaws the
// filesystem when its parent can no longer be trusted to:
//
//   - the parent's end of the command pipe (the child's stdin) closes
//     without a "thawed" message: the parent exited or was killed (the
//     kernel closes the pipe when the process's last thread exits);
//   - the parent is being killed or has gone while a thread of it is stuck
//     (a thread blocked writing to the frozen filesystem keeps a killed
//     process, and so the pipe, alive until the thaw): polled every
//     watchdogPoll in /proc/PPID/status (SIGKILL pending, zombie) and by
//     the child being re-parented;
//   - the deadline plus grace passed since the freeze (or since it was
//     about to freeze, if the parent never says it froze).
//
// Protocol on the child's stdin, one letter a line: F (about to freeze:
// from now on the child is armed, and the limit runs), Z (frozen: the
// limit starts again, from the end of FIFREEZE as the parent's deadline), T
// (thawed: exit), X (the freeze failed: exit without thawing). The child
// writes "ready" on stdout once it holds the mount point.
const (
	watchdogName  = "blockdev-watchdog"
	watchdogPoll  = 20 * time.Millisecond
	watchdogStart = 30 * time.Second // a loaded machine can be slow to exec

	// Exit codes of the child.
	wdExitDone      = 0  // told the parent thawed, or never armed
	wdExitFailed    = 1  // FITHAW failed
	wdExitUsage     = 2  // bad arguments or mount point
	wdExitThawed    = 10 // the watchdog thawed the filesystem
	wdExitNotFrozen = 11 // the watchdog found it already thawed
)

func init() { reexec.Register(watchdogName, watchdogMain) }

// watchdog is the parent's handle on the child.
type watchdog struct {
	cmd     *exec.Cmd
	in      io.WriteCloser
	exited  chan struct{}
	waitErr error
	closed  bool
}

func startWatchdog(ctx context.Context, m Mount, limit time.Duration) (*watchdog, error) {
	cmd, err := reexec.Command(watchdogName, m.MountPoint, strconv.Itoa(m.ID), fmt.Sprintf("%d:%d", m.Major, m.Minor), limit.String(), strconv.Itoa(os.Getpid()))
	if err != nil {
		return nil, err
	}
	// Its own process group: a Ctrl-C on the terminal reaches the parent,
	// which thaws, and not the watchdog, which must outlive the parent.
	// No Pdeathsig, for the same reason.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	w := &watchdog{cmd: cmd, in: in, exited: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("unexpected %q", line)
		}
		ready <- err
	}()
	timer := time.NewTimer(watchdogStart)
	defer timer.Stop()
	select {
	case err = <-ready:
	case <-ctx.Done():
		err = ctx.Err()
	case <-timer.C:
		err = fmt.Errorf("not ready after %v", watchdogStart)
	}
	go func() { w.waitErr = cmd.Wait(); close(w.exited) }()
	if err != nil {
		cmd.Process.Kill()
		<-w.exited
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("child exited before it was ready (%v; its message, if any, is on stderr); the program must call blockdev.Main first in main", w.waitErr)
		}
		return nil, fmt.Errorf("child: %v", err)
	}
	return w, nil
}

func (w *watchdog) send(cmd string) error {
	if _, err := io.WriteString(w.in, cmd+"\n"); err != nil {
		return fmt.Errorf("telling the watchdog %q: %w", cmd, err)
	}
	return nil
}

func (w *watchdog) arm() error    { return w.send("F") }
func (w *watchdog) frozen() error { return w.send("Z") }

// disarm tells the child the freeze failed: it exits without thawing.
func (w *watchdog) disarm() {
	_ = w.send("X")
	w.release()
}

// finish ends the watchdog after the parent's thaw. notFrozen says the
// filesystem is no longer frozen by us: the parent thawed it, or found it
// thawed (by someone else, or by the watchdog): the child is told T and
// must not thaw, for a FITHAW now could end a freeze someone else took
// since. Only when the parent's own FITHAW failed otherwise is the child
// left to try its own (closing the pipe without T makes an armed child
// thaw). It returns the child's exit code and what it means, for error
// messages.
func (w *watchdog) finish(notFrozen bool) (int, string) {
	if notFrozen {
		_ = w.send("T")
	}
	w.release()
	code := w.cmd.ProcessState.ExitCode()
	return code, w.note(code)
}

// exitCode reports, without waiting, whether the child has exited, and
// its exit code (-1 if a signal killed it).
func (w *watchdog) exitCode() (code int, exited bool) {
	select {
	case <-w.exited:
		return w.cmd.ProcessState.ExitCode(), true
	default:
		return 0, false
	}
}

// note says what the child's exit code means, for error messages; call it
// once the child has exited.
func (w *watchdog) note(code int) string {
	switch code {
	case wdExitDone:
		return "the watchdog did nothing"
	case wdExitThawed:
		return "the watchdog thawed it"
	case wdExitNotFrozen:
		return "the watchdog found it thawed"
	default:
		return fmt.Sprintf("watchdog: %v", w.waitErr)
	}
}

// release closes the pipe and waits for the child to exit. If it was
// armed and not told T, it thaws first.
func (w *watchdog) release() {
	if !w.closed {
		w.closed = true
		w.in.Close()
	}
	select {
	case <-w.exited:
	case <-time.After(10 * time.Second):
		// A child that does not exit on EOF is broken; it has had its
		// chance to thaw.
		w.cmd.Process.Kill()
		<-w.exited
	}
}

// watchdogMain is the child. Arguments: mount point, mount ID, the mount's
// major:minor, limit (deadline plus grace), parent PID.
func watchdogMain() {
	// The parent may be gone when we write; a broken pipe must be an
	// error, not a death. Terminal signals go to the parent.
	signal.Ignore(syscall.SIGPIPE, syscall.SIGINT, syscall.SIGHUP)
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	// Keep the OOM killer away from the one process that must survive.
	_ = os.WriteFile("/proc/self/oom_score_adj", []byte("-1000"), 0)

	fail := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "blockdev watchdog: "+format+"\n", args...)
		os.Exit(wdExitUsage)
	}
	if len(os.Args) != 6 {
		fail("want 5 arguments, got %q", os.Args[1:])
	}
	mp := os.Args[1]
	id, err := strconv.Atoi(os.Args[2])
	if err != nil {
		fail("bad mount ID %q", os.Args[2])
	}
	major, minor, err := parseDevNumber(os.Args[3])
	if err != nil {
		fail("%v", err)
	}
	limit, err := time.ParseDuration(os.Args[4])
	if err != nil || limit <= 0 {
		fail("bad limit %q", os.Args[4])
	}
	ppid, err := strconv.Atoi(os.Args[5])
	if err != nil || ppid != os.Getppid() {
		fail("parent %q is not %d", os.Args[5], os.Getppid())
	}
	dir, err := openMountPoint(Mount{ID: id, MountPoint: mp, Major: major, Minor: minor})
	if err != nil {
		fail("%v", err)
	}
	if _, err := os.Stdout.WriteString("ready\n"); err != nil {
		os.Exit(wdExitUsage)
	}

	cmds := make(chan byte)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if t := sc.Text(); t != "" {
				cmds <- t[0]
			}
		}
		close(cmds)
	}()

	thawExit := func(why string) {
		err := thaw(dir)
		switch {
		case err == nil:
			fmt.Fprintf(os.Stderr, "blockdev watchdog: %s: thawed %s\n", why, mp)
			os.Exit(wdExitThawed)
		case errors.Is(err, unix.EINVAL):
			os.Exit(wdExitNotFrozen)
		default:
			fmt.Fprintf(os.Stderr, "blockdev watchdog: %s: %v\n", why, err)
			os.Exit(wdExitFailed)
		}
	}
	armed := false
	var deadline <-chan time.Time
	var poll <-chan time.Time
	for {
		select {
		case c, ok := <-cmds:
			if !ok {
				if armed {
					thawExit(fmt.Sprintf("parent %d went away", ppid))
				}
				os.Exit(wdExitDone)
			}
			switch c {
			case 'F':
				armed = true
				t := time.NewTicker(watchdogPoll)
				poll = t.C
				// Counted from here too, not only from Z: a parent that
				// hangs during or right after its FIFREEZE, before it
				// can say Z, must not leave the filesystem frozen
				// for good, nor a FIFREEZE that takes longer than the
				// whole limit (it writes back all dirty data) block
				// writers for longer.
				deadline = time.After(limit)
			case 'Z':
				deadline = time.After(limit)
			case 'T', 'X':
				os.Exit(wdExitDone)
			}
		case <-deadline:
			thawExit(fmt.Sprintf("%v passed since the freeze", limit))
		case <-poll:
			if why := parentDying(ppid); why != "" {
				thawExit(why)
			}
		case <-term:
			if armed {
				thawExit("SIGTERM")
			}
			os.Exit(wdExitDone)
		}
	}
}

// parentDying says why the parent is to be considered dead, or "".
func parentDying(ppid int) string {
	if os.Getppid() != ppid {
		return fmt.Sprintf("parent %d exited", ppid)
	}
	status, err := os.ReadFile("/proc/" + strconv.Itoa(ppid) + "/status")
	if err != nil {
		return fmt.Sprintf("parent %d is gone (%v)", ppid, err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "State":
			if strings.HasPrefix(v, "Z") || strings.HasPrefix(v, "X") {
				return fmt.Sprintf("parent %d is exiting (%s)", ppid, v)
			}
		case "SigPnd", "ShdPnd":
			if mask, err := strconv.ParseUint(v, 16, 64); err == nil && mask&(1<<(uint(syscall.SIGKILL)-1)) != 0 {
				return fmt.Sprintf("parent %d is being killed", ppid)
			}
		}
	}
	return ""
}
