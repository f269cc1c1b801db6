// Command tracerun traces a block device while it runs a command, then
// reports the changed blocks. bench/tracer-overhead uses it to measure what
// tracing costs a workload.
//
//	tracerun [-source auto|classic|ftrace] [-block-size N] [-poll-interval D] [-cpuprofile FILE] DEVICE CMD [ARG...]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/blockimage/blockimage/tracer"
)

func main() {
	source := flag.String("source", "auto", "auto, classic or ftrace")
	bs := flag.Int("block-size", 4096, "block size of the changed-block set")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the tracer's process to this file")
	poll := flag.Duration("poll-interval", 0, "longest time events wait in the kernel's buffers (0: the default)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: tracerun [-source auto|classic|ftrace] [-block-size N] [-poll-interval D] [-cpuprofile FILE] DEVICE CMD [ARG...]\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() < 2 {
		flag.Usage()
		os.Exit(2)
	}
	o := tracer.Options{BlockSize: *bs, PollInterval: *poll}
	switch *source {
	case "auto":
	case "classic":
		o.Source = tracer.Classic
	case "ftrace":
		o.Source = tracer.Ftrace
	default:
		fmt.Fprintf(os.Stderr, "tracerun: unknown source %q\n", *source)
		os.Exit(2)
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "tracerun: %v\n", err)
			os.Exit(1)
		}
		pprof.StartCPUProfile(f)
		code := run(flag.Arg(0), flag.Args()[1:], o)
		pprof.StopCPUProfile()
		f.Close()
		os.Exit(code)
	}
	os.Exit(run(flag.Arg(0), flag.Args()[1:], o))
}

func run(device string, command []string, o tracer.Options) int {
	ctx := context.Background()
	t, err := tracer.Start(ctx, device, o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "tracerun: %v\n", err)
		return 1
	}
	defer t.Stop()
	cmd := exec.CommandContext(ctx, command[0], command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmdErr := cmd.Run()
	n, err := t.Cut(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "tracerun: flush: %v\n", err)
		return 1
	}
	s := t.Set()
	ok, why := s.Complete()
	fmt.Fprintf(os.Stderr, "tracerun: source %v, epoch %d: %d blocks of %d bytes changed, complete %v %s\n",
		t.Source(), n, s.Count(n), s.BlockSize(), ok, why)
	// What the tracer cost, without the command: this process's threads
	// only (RUSAGE_SELF leaves out children).
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		fmt.Fprintf(os.Stderr, "tracerun: tracer process: %d ms of CPU, %d context switches\n",
			cpu.Milliseconds(), ru.Nvcsw+ru.Nivcsw)
	}
	if cmdErr != nil {
		fmt.Fprintf(os.Stderr, "tracerun: %v\n", cmdErr)
		return 1
	}
	return 0
}
