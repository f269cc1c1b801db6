package blockdev

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// errOverrun is the cause of the critical section's context when the
// deadline passed.
var errOverrun = fmt.Errorf("%w: the freeze deadline passed", ErrNotConsistent)

// errWatchdogThawed stands for the parent's thaw when the watchdog had
// already ended the freeze.
var errWatchdogThawed = errors.New("blockdev: the watchdog thawed first")

func (s *Sequencer) run(ctx context.Context, critical func(context.Context) error, rep Report) (Report, error) {
	major, minor, err := blockDevNumber(s.Device)
	if err != nil {
		return rep, err
	}
	mounts, err := mountsOfDevice(major, minor)
	if err != nil {
		return rep, err
	}
	if len(mounts) == 0 {
		if err := checkUnmountedUse(major, minor); err != nil {
			return rep, fmt.Errorf("%w (nothing was frozen)", err)
		}
		// Not mounted here; O_EXCL makes sure it is not mounted anywhere
		// (another mount namespace does not show in our mountinfo) nor
		// held, and, held open, that nobody mounts or claims it until the
		// sequence ends.
		dev, err := os.OpenFile(s.Device, os.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.EBUSY) {
			return rep, fmt.Errorf("%w: %s is not mounted in this mount namespace but is busy (mounted elsewhere or held): %v", ErrInUse, s.Device, err)
		}
		if err != nil {
			return rep, err
		}
		defer dev.Close()
		return s.runUnmounted(ctx, dev, critical, rep)
	}
	dev, err := os.OpenFile(s.Device, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return rep, err
	}
	defer dev.Close()
	if !s.AllowSelf {
		if err := refuseSelf(major, minor, mounts); err != nil {
			return rep, err
		}
	}
	m, dir, err := openSomeMount(mounts)
	if err != nil {
		return rep, err
	}
	defer dir.Close()
	rep.MountPoint, rep.FSType = m.MountPoint, m.FSType

	t := time.Now()
	if err := syncfs(dir); err != nil {
		return rep, err
	}
	rep.Syncfs = time.Since(t)

	limit := s.deadline() + s.grace()
	if limit < s.deadline() { // overflow: a Deadline of "forever"
		limit = math.MaxInt64
	}
	wd, err := startWatchdog(ctx, m, limit)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil { // cancelled, not unavailable
			return rep, fmt.Errorf("blockdev: starting the freeze watchdog: %w (nothing was frozen)", cerr)
		}
		return rep, fmt.Errorf("%w: %v (nothing was frozen)", ErrWatchdog, err)
	}
	defer wd.release()
	return s.runFrozen(ctx, dir, dev, wd, critical, rep)
}

// openSomeMount opens a mount to freeze through. Every mount of a device
// shares its superblock, so one freeze covers all; a mount of the
// filesystem's root reads best in reports, and the others serve when it
// cannot be opened (another mount hides it).
func openSomeMount(mounts []Mount) (Mount, *os.File, error) {
	order := slices.Clone(mounts)
	slices.SortStableFunc(order, func(a, b Mount) int {
		return cmp.Compare(boolInt(a.Root != "/"), boolInt(b.Root != "/"))
	})
	var first error
	for _, m := range order {
		dir, err := openMountPoint(m)
		if err == nil {
			return m, dir, nil
		}
		if first == nil {
			first = err
		}
	}
	return Mount{}, nil, first
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// refuseSelf returns an error wrapping ErrRefused when the filesystem on
// major:minor, mounted as mounts, is mounted at / or holds / or the
// running binary.
func refuseSelf(major, minor uint32, mounts []Mount) error {
	for _, m := range mounts {
		if m.MountPoint == "/" {
			return fmt.Errorf("%w: the filesystem is mounted at / (set AllowSelf to override)", ErrRefused)
		}
	}
	// The filesystem's numbers: the device's, and mountinfo's for its
	// mounts (btrfs has an anonymous one).
	ours := map[[2]uint32]bool{{major, minor}: true}
	btrfs := false
	for _, m := range mounts {
		ours[[2]uint32{m.Major, m.Minor}] = true
		btrfs = btrfs || m.FSType == "btrfs"
	}
	all, err := readMounts(nil)
	if err != nil {
		return fmt.Errorf("%w: cannot tell whether the filesystem holds / or the running binary: %v", ErrRefused, err)
	}
	same := func(path string) (bool, error) {
		id, ma, mi, haveID, err := mountIDOf(unix.AT_FDCWD, path, 0)
		if err != nil {
			return false, err
		}
		if !haveID {
			// Before Linux 5.8: st_dev, right but for btrfs.
			if btrfs {
				return false, errors.New("the kernel reports no mount IDs (statx STATX_MNT_ID, Linux 5.8), and btrfs st_dev numbers match no mount")
			}
			return ours[[2]uint32{ma, mi}], nil
		}
		// The mount path is on, by the kernel's word: st_dev would
		// not do, as btrfs gives each subvolume a number of its own.
		for _, m := range all {
			if m.ID == id {
				return ours[[2]uint32{m.Major, m.Minor}], nil
			}
		}
		return false, fmt.Errorf("its mount %d is not in %s", id, mountInfoPath)
	}
	if yes, err := same("/"); err != nil {
		return fmt.Errorf("%w: cannot tell whether the filesystem holds / (set AllowSelf to override): %v", ErrRefused, err)
	} else if yes {
		return fmt.Errorf("%w: the filesystem holds / (set AllowSelf to override)", ErrRefused)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("%w: cannot tell whether the filesystem holds the running binary (set AllowSelf to override): %v", ErrRefused, err)
	}
	if yes, err := same(exe); err != nil {
		return fmt.Errorf("%w: cannot tell whether the filesystem holds the running binary %s (set AllowSelf to override): %v", ErrRefused, exe, err)
	} else if yes {
		return fmt.Errorf("%w: the filesystem holds the running binary %s (set AllowSelf to override)", ErrRefused, exe)
	}
	return nil
}

// openMountPoint opens the mount point of m and checks that it is still m
// (it could have been unmounted, hidden by another mount, or replaced since
// mountinfo was read): the mount the open directory is on (statx
// STATX_MNT_ID), which the open directory keeps from being unmounted, must
// be in mountinfo now with m's device number. Before Linux 5.8 the
// directory's st_dev must be m's device number, which btrfs's never is.
func openMountPoint(m Mount) (*os.File, error) {
	mp := m.MountPoint
	fd, err := unix.Open(mp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: mp, Err: err}
	}
	f := os.NewFile(uintptr(fd), mp)
	id, major, minor, haveID, err := mountIDOf(fd, "", unix.AT_EMPTY_PATH)
	if err != nil {
		f.Close()
		return nil, &os.PathError{Op: "statx", Path: mp, Err: err}
	}
	if haveID {
		now, err := readMounts(func(n *Mount) bool { return n.ID == id })
		if err != nil {
			f.Close()
			return nil, err
		}
		if len(now) != 1 {
			f.Close()
			return nil, fmt.Errorf("blockdev: %s is on mount %d, which is not in %s", mp, id, mountInfoPath)
		}
		major, minor = now[0].Major, now[0].Minor
	}
	if major != m.Major || minor != m.Minor {
		f.Close()
		return nil, fmt.Errorf("blockdev: %s is no longer the filesystem on %d:%d (it is on %d:%d)", mp, m.Major, m.Minor, major, minor)
	}
	return f, nil
}

// runUnmounted is the sequence without a filesystem to freeze, on dev
// opened with O_EXCL.
func (s *Sequencer) runUnmounted(ctx context.Context, dev *os.File, critical func(context.Context) error, rep Report) (Report, error) {
	t := time.Now()
	if err := flushBuffers(dev); err != nil {
		return rep, err
	}
	rep.FlushBuffers = time.Since(t)
	if s.FlushTracer != nil {
		t = time.Now()
		if err := s.FlushTracer(ctx); err != nil {
			return rep, fmt.Errorf("blockdev: flushing the change tracer: %w", err)
		}
		rep.FlushTracer = time.Since(t)
	}
	t = time.Now()
	err := critical(ctx)
	rep.Critical = time.Since(t)
	if err != nil {
		return rep, err
	}
	s.logf("blockdev: %s is not mounted: flushed buffers and ran the critical section in %v", s.Device, rep.FlushBuffers+rep.FlushTracer+rep.Critical)
	return rep, nil
}

// workResult is what the frozen steps after FIFREEZE report.
type workResult struct {
	err                    error
	flush, tracer, critics time.Duration
	panicked               bool
	panicValue             any
	stack                  []byte
}

// work runs BLKFLSBUF, the tracer flush and the critical section on its
// own goroutine, so that Run can thaw while they still run.
func (s *Sequencer) work(ctx context.Context, dev *os.File, critical func(context.Context) error, done chan<- workResult) {
	var r workResult
	returned := false
	defer func() {
		if !returned {
			if p := recover(); p != nil {
				r.panicked, r.panicValue, r.stack = true, p, debug.Stack()
			} else {
				r.err = errors.New("blockdev: the critical section called runtime.Goexit")
			}
		}
		done <- r
	}()
	t := time.Now()
	if err := flushBuffers(dev); err != nil {
		r.err, returned = err, true
		return
	}
	r.flush = time.Since(t)
	if s.FlushTracer != nil {
		t = time.Now()
		err := s.FlushTracer(ctx)
		r.tracer = time.Since(t)
		if err != nil {
			r.err, returned = fmt.Errorf("blockdev: flushing the change tracer: %w", err), true
			return
		}
	}
	t = time.Now()
	err := critical(ctx)
	r.critics = time.Since(t)
	r.err, returned = err, true
}

func (s *Sequencer) runFrozen(ctx context.Context, dir, dev *os.File, wd *watchdog, critical func(context.Context) error, rep Report) (Report, error) {
	// SIGINT and SIGTERM are ours from just before the freeze to just
	// after the thaw. One that arrives in that span, also on a path that
	// never froze, is re-raised at the end unless the program handles
	// signals itself. This defer runs last, after the thaw.
	// A signal the program ignores stays ignored: it cannot end the
	// program, and listening would undo the ignoring.
	sigc := make(chan os.Signal, 1)
	for _, sig := range []os.Signal{syscall.SIGINT, syscall.SIGTERM} {
		if !signal.Ignored(sig) {
			signal.Notify(sigc, sig)
		}
	}
	defer func() {
		signal.Stop(sigc)
		if rep.Signal == nil {
			select {
			case rep.Signal = <-sigc:
			default:
			}
		}
		if rep.Signal != nil && !s.SignalsHandled {
			reraise(rep.Signal)
		}
	}()

	if err := ctx.Err(); err != nil { // cancelled while starting: do not freeze for nothing
		return rep, err
	}
	if err := wd.arm(); err != nil {
		return rep, fmt.Errorf("%w: %v (nothing was frozen)", ErrWatchdog, err)
	}
	start := time.Now()
	if err := freeze(dir); err != nil {
		wd.disarm()
		return rep, err
	}
	frozenAt := time.Now()
	rep.Frozen, rep.Freeze = true, frozenAt.Sub(start)

	// From here on the filesystem must be thawed whatever happens; the
	// deferred thaw covers a panic in this function itself.
	thawed := false
	var thawErr error
	thawNow := func() {
		if thawed {
			return
		}
		thawed = true
		t := time.Now()
		if code, exited := wd.exitCode(); exited && (code == wdExitThawed || code == wdExitNotFrozen) {
			// The watchdog ended the freeze (its deadline, a SIGTERM)
			// or found it ended: a FITHAW of ours now could end a
			// freeze someone else took since.
			thawErr = errWatchdogThawed
		} else {
			thawErr = thawRetry(dir)
		}
		rep.Thaw = time.Since(t)
		rep.FrozenFor = time.Since(start)
	}
	defer thawNow()
	// notFrozen says whether the filesystem is no longer frozen by us,
	// so that the watchdog must not thaw it.
	notFrozen := func() bool {
		return thawErr == nil || errors.Is(thawErr, unix.EINVAL) || errors.Is(thawErr, errWatchdogThawed)
	}

	if err := wd.frozen(); err != nil {
		thawNow()
		wd.finish(notFrozen())
		return rep, errors.Join(fmt.Errorf("%w: %v (thawed at once)", ErrWatchdog, err), thawErr)
	}

	deadline := s.deadline()
	dctx, dcancel := context.WithDeadlineCause(ctx, frozenAt.Add(deadline), errOverrun)
	defer dcancel()
	cctx, cancel := context.WithCancelCause(dctx)
	defer cancel(nil)
	done := make(chan workResult, 1)
	go s.work(cctx, dev, critical, done)

	timer := time.NewTimer(time.Until(frozenAt.Add(deadline)))
	defer timer.Stop()
	var res workResult
	var cutErr error
	select {
	case res = <-done:
	case <-timer.C:
		cutErr = fmt.Errorf("%w: the critical section overran the %v deadline; thawed after %v", ErrNotConsistent, deadline, time.Since(start).Round(time.Microsecond))
	case <-ctx.Done():
		cutErr = fmt.Errorf("%w: %w", ErrNotConsistent, context.Cause(ctx))
	case sig := <-sigc:
		rep.Signal = sig
		cutErr = fmt.Errorf("%w (%v): %w", ErrInterrupted, sig, ErrNotConsistent)
	case <-wd.exited:
		// The safety net is gone, or it has thawed (its deadline
		// passed while this process could not run, or someone sent it
		// SIGTERM): end the freeze now, ourselves unless it did.
		code, _ := wd.exitCode()
		if code == wdExitThawed || code == wdExitNotFrozen {
			cutErr = fmt.Errorf("%w: the freeze ended early (%s)", ErrNotConsistent, wd.note(code))
		} else {
			cutErr = fmt.Errorf("%w: %w: it exited while the filesystem was frozen (%s); thawed at once", ErrNotConsistent, ErrWatchdog, wd.note(code))
		}
	}
	thawNow()
	// Dismiss the watchdog now, not after a cut critical section has
	// returned (which may take long): its own limit would otherwise pass
	// meanwhile, and its FITHAW end a freeze someone else took after ours.
	wdCode, wdNote := wd.finish(notFrozen())
	if cutErr != nil {
		rep.Cut = true
		cancel(cutErr)
		res = <-done
	}
	rep.FlushBuffers, rep.FlushTracer, rep.Critical = res.flush, res.tracer, res.critics

	if res.panicked {
		s.logf("blockdev: critical section panicked while %s was frozen; thawed after %v (%v); re-panicking: %v\n%s", rep.MountPoint, rep.FrozenFor, thawErr, res.panicValue, res.stack)
		panic(res.panicValue)
	}
	var errs []error
	if cutErr != nil {
		errs = append(errs, cutErr)
	}
	if thawErr != nil {
		switch {
		case errors.Is(thawErr, errWatchdogThawed):
			thawErr = fmt.Errorf("%w: the watchdog ended the freeze of %s before Run did (%s)", ErrNotConsistent, rep.MountPoint, wdNote)
		case errors.Is(thawErr, unix.EINVAL):
			// Someone thawed it before us: the freeze did not cover the
			// whole critical section.
			thawErr = fmt.Errorf("%w: %s was thawed by someone else while frozen (%s)", ErrNotConsistent, rep.MountPoint, wdNote)
		case wdCode == wdExitThawed || wdCode == wdExitNotFrozen:
			thawErr = fmt.Errorf("%w; %s", thawErr, wdNote)
		default:
			thawErr = fmt.Errorf("%w; the watchdog could not thaw it either (%s): %s may still be frozen, try fsfreeze --unfreeze", thawErr, wdNote, rep.MountPoint)
		}
		if cutErr == nil {
			errs = append(errs, thawErr)
		}
	}
	if res.err != nil && (cutErr == nil || !errors.Is(res.err, context.Canceled) && !errors.Is(res.err, context.DeadlineExceeded)) {
		errs = append(errs, res.err)
	}
	err := errors.Join(errs...)
	if len(errs) == 1 {
		err = errs[0]
	}
	s.logf("blockdev: %s (%s on %s) frozen for %v: freeze %v, flush %v, tracer %v, critical %v, thaw %v; err=%v",
		rep.MountPoint, rep.FSType, s.Device, rep.FrozenFor, rep.Freeze, rep.FlushBuffers, rep.FlushTracer, rep.Critical, rep.Thaw, err)
	return rep, err
}

// thawRetry thaws, retrying a few times on errors other than EINVAL (not
// frozen), which is final.
func thawRetry(dir *os.File) error {
	var err error
	for i := 0; i < 3; i++ {
		if err = thaw(dir); err == nil || errors.Is(err, unix.EINVAL) {
			return err
		}
		time.Sleep(time.Duration(i+1) * time.Millisecond)
	}
	return err
}

// reraise delivers sig again now that nothing of ours listens for it, so
// that the program's own reaction (by default, termination) happens. It is
// sent to the calling thread, which takes it before tgkill returns: a
// program that dies of it does so here, before Run returns.
func reraise(sig os.Signal) {
	s, ok := sig.(syscall.Signal)
	if !ok {
		return
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_ = unix.Tgkill(unix.Getpid(), unix.Gettid(), s)
}
