// Package blockdev is the consistency core of a backup agent: it opens block
// devices and image files, finds where a device is mounted, and freezes a
// live filesystem for exactly as long as a backup needs, never longer.
//
// # Devices and mounts
//
// [Open] gives a [Device]: an io.ReaderAt and io.WriterAt over a block
// device or an image file, with its size and logical and physical sector
// sizes (BLKGETSIZE64, BLKSSZGET, BLKPBSZGET; see ioctl_list(2)), and
// optional O_DIRECT reads that bypass the page cache. [MountsOf] and
// [DeviceOf] resolve a device to its mounts and a path to its device from
// /proc/self/mountinfo (proc_pid_mountinfo(5)), matching device numbers
// (major:minor) so that loop devices, bind mounts and devices mounted
// under another name are found (btrfs, whose numbers are anonymous, by
// mount source and statx mount IDs); [ParseMountInfo] is the parser alone.
// [Freeze], [Thaw], [FlushBuffers] and [Syncfs] wrap FIFREEZE, FITHAW,
// BLKFLSBUF and syncfs(2) for callers that need them one by one.
//
// # The sequence
//
// A [Sequencer] makes the device hold a consistent filesystem, and the
// change tracer know every write up to that point, while the caller's
// critical section copies what must be consistent. The order is the
// design's, from the top of the I/O stack down:
//
//  1. filesystem buffers: FIFREEZE blocks new writes, then writes the
//     filesystem's dirty data, metadata and journal to the device (a
//     syncfs beforehand, while writers still run, leaves it little to do);
//  2. block device buffers: BLKFLSBUF writes what the device's own buffer
//     cache still holds and drops it, so nothing the freeze wrote is left
//     above the device;
//  3. trace buffers: Sequencer.FlushTracer (the tracer package's Flush)
//     makes every write that reached the device part of the changed-block
//     set. Flushing it earlier would miss the writes of steps 1 and 2.
//
// Then the critical section runs, and FITHAW ends the freeze. The package
// does not import the tracer: the flush is a function, so each package can
// be used alone.
//
// # Safety
//
// A frozen filesystem blocks every writer on the machine, so the sequencer
// is built to never leave one frozen:
//
//   - Deadline: the filesystem is thawed when Sequencer.Deadline passes
//     (default 10 s), whether or not the critical section has returned; its
//     context is cancelled and Run returns an error wrapping
//     [ErrNotConsistent], because what it copied after the thaw may be
//     torn.
//   - Every exit path thaws: a returned error, a panic (re-raised after the
//     thaw), runtime.Goexit, cancellation of the context, and SIGINT or
//     SIGTERM, which thaw at once and are then re-raised (see
//     Sequencer.SignalsHandled). If the thaw finds the filesystem already
//     thawed (FITHAW fails with EINVAL), someone else ended the freeze
//     early and Run says the image is not consistent.
//   - The watchdog survives the process's death. Before freezing, Run
//     starts this program again as a small child process (hence [Main])
//     that opens the mount point itself, in a process group of its own and
//     shielded from the OOM killer (oom_score_adj -1000, where the process
//     has CAP_SYS_RESOURCE to set it; containers often drop it). It thaws when the parent's end of
//     their pipe closes without the parent having reported its own thaw
//     (the parent exited, crashed or was killed with SIGKILL), when it sees
//     the parent being killed or exiting in /proc (polled every 20 ms while
//     frozen; this covers a killed process kept alive by a thread stuck
//     writing to the frozen filesystem, whose pipe only closes at the
//     thaw), and in any case when Deadline plus Sequencer.WatchdogGrace
//     (default 2 s) have passed since the freeze (a hung or stopped
//     parent; counted from just before FIFREEZE if the parent hangs
//     before it can say the freeze is done). The bound after SIGKILL is therefore the watchdog's
//     wake-up: immediate on the pipe's closing, at most one 20 ms poll
//     otherwise, plus scheduling delay, which no program can bound on a
//     busy machine (from the kill to a blocked writer's completed write
//     and fsync: 4 to 272 ms, median about 20 ms, over 32 kills on ext4,
//     XFS and btrfs on a 2-core machine at load 10; go test -v -count=8
//     -run WatchdogThawsAfterSIGKILL logs each); and never more than
//     Deadline plus grace after the freeze. If Run cannot start the
//     watchdog it does not freeze; if the watchdog exits while frozen,
//     Run ends the freeze at once and returns an error wrapping
//     [ErrNotConsistent] (and [ErrWatchdog] if it died without thawing).
//     Only one of the two thaws: once the watchdog has thawed, or Run's
//     FITHAW has found the filesystem thawed, the other stays away from
//     it, because a FITHAW then could end a freeze someone else took
//     meanwhile.
//   - Refusal: Run refuses, with [ErrRefused], to freeze the filesystem
//     mounted at / or holding the running binary (os.Executable): the
//     program's next write there (a log line, a temporary file, its
//     configuration) would block until the thaw, and on / so would most
//     of the machine's. Sequencer.AllowSelf overrides this.
//   - A device that is not mounted is not frozen: the flushes and the
//     critical section run, and the Report says Frozen is false. "Not
//     mounted" is checked by the kernel, not only by our mountinfo: the
//     device is opened with O_EXCL, which fails if it is mounted in any
//     mount namespace, or held by device-mapper, RAID or swap, and which,
//     held open, keeps anyone from mounting it until the sequence ends. A
//     whole disk with a mounted partition is refused with [ErrInUse].
//   - Other fatal signals (SIGHUP, SIGQUIT, a crash) are not caught: the
//     process dies and the watchdog thaws, as after SIGKILL.
//   - A filesystem mounted several times (bind mounts) shares one
//     superblock and is frozen once, through the mount of its root if
//     there is one. One already frozen by someone else is not touched:
//     FIFREEZE fails with EBUSY and Run returns that error.
//
// What it cannot do: a SIGKILL sent to every process of the agent's cgroup
// at once (systemd's KillMode=control-group after its stop timeout) kills
// the watchdog too, so run an agent with KillMode=mixed or process; and a
// watchdog whose parent died in the instant between its own thaw (or a
// FIFREEZE that failed because someone else froze first) and telling the
// watchdog could thaw a freeze someone else holds: the kernel does not
// tell one userspace freeze from another. The critical section must not write to the frozen filesystem,
// log to it included: such a write blocks until the thaw.
//
// The ioctls need CAP_SYS_ADMIN. The package builds everywhere; outside
// Linux only Open of regular files and the mountinfo parser work, and the
// rest returns errors.ErrUnsupported.
package blockdev
