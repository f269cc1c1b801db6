package tracer

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The readers' system calls on their trace files are made raw, without
// telling the Go runtime, because none of them waits for data: the files
// and pipes are non-blocking, and polls have a zero timeout. They can
// still sleep briefly in the kernel: on the ring's per-CPU reader locks
// while another reader of the ring (someone reading "trace") copies
// events, on memory reclaim when the kernel allocates a page, on a page
// fault in copying to user memory. For that time the goroutine keeps its
// P, as a goroutine computing would, and a stop-the-world waits for it.
//
// Telling the runtime costs more than the calls. A system call made the
// usual way (syscall.Syscall, and so unix.Read) wakes the runtime's monitor
// thread, sysmon, from its deep sleep, and sysmon then checks every 20
// microseconds whether the call has blocked, until every goroutine is idle
// again. Every reader wake-up paid for that with monitor wake-ups, and
// each one takes a CPU from the workload being traced for a moment. With
// raw calls, the tracer process under fio (tracerun, 512 MiB of random 4
// KiB writes, medians of 8 alternating runs) went from 1,027 context
// switches to 785 and from 77 ms of CPU to 72.
//
// Calls that may wait keep the usual entry: the poll(2) fallback's wait,
// writes, opens, and the reads of the settings files that take a lock in
// the kernel (current_tracer, buffer_size_kb and tracing_cpumask take the
// tracing mutexes that a change of settings holds, a disk's trace/enable
// its queue's). tracing_on and pause-on-trace read a flag without a lock
// and are read raw (newRawSysFile).

// rawRead is read(2) for a non-blocking file.
func rawRead(fd int, p []byte) (int, error) {
	var ptr unsafe.Pointer
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(ptr), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// rawPreadAt0 is pread(2) at offset 0 of a sysfs or tracefs file that
// renders without waiting. With the offset 0, every argument after the
// count is 0, which is right for each architecture's way of passing a
// 64-bit offset (one register, two, or two after a padding one).
func rawPreadAt0(fd int, p []byte) (int, error) {
	var ptr unsafe.Pointer
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	n, _, e := unix.RawSyscall6(unix.SYS_PREAD64, uintptr(fd), uintptr(ptr), uintptr(len(p)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// rawSpliceNonblock is splice(2) from a non-blocking file into a
// non-blocking pipe, with SPLICE_F_NONBLOCK.
func rawSpliceNonblock(in, out, n int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), unix.SPLICE_F_NONBLOCK)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// rawPollNow is ppoll(2) with a zero timeout: it never waits. On 32-bit
// systems SYS_PPOLL takes a 32-bit time, which a kernel built without
// COMPAT_32BIT_TIME refuses (ENOSYS): then it polls the usual way.
func rawPollNow(fds []unix.PollFd) (int, error) {
	var ts unix.Timespec
	n, _, e := unix.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&fds[0])), uintptr(len(fds)), uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
	if e == unix.ENOSYS {
		return unix.Poll(fds, 0)
	}
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
