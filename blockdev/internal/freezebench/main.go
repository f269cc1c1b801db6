// Command freezebench runs the blockdev Sequencer with an empty critical
// section on DEVICE, for bench/blockdev-freeze. With -n N it runs N times
// and prints the medians of the whole Run and of the time the filesystem
// stayed frozen, and whether the median Run is under -target.
//
//	freezebench [-n N] [-target 20ms] DEVICE
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/blockimage/blockimage/blockdev"
)

func main() {
	blockdev.Main()
	n := flag.Int("n", 1, "runs")
	target := flag.Duration("target", 20*time.Millisecond, "target for the median Run")
	flag.Parse()
	if flag.NArg() != 1 || *n < 1 {
		fmt.Fprintln(os.Stderr, "usage: freezebench [-n N] [-target D] DEVICE")
		os.Exit(2)
	}
	s := &blockdev.Sequencer{Device: flag.Arg(0)}
	var runs, frozen []time.Duration
	for i := 0; i < *n; i++ {
		t := time.Now()
		rep, err := s.Run(context.Background(), func(context.Context) error { return nil })
		d := time.Since(t)
		if err != nil {
			fmt.Fprintln(os.Stderr, "freezebench:", err)
			os.Exit(1)
		}
		if !rep.Frozen {
			fmt.Fprintf(os.Stderr, "freezebench: %s is not mounted, nothing was frozen\n", s.Device)
			os.Exit(1)
		}
		runs, frozen = append(runs, d), append(frozen, rep.FrozenFor)
	}
	if *n == 1 {
		return
	}
	mr, mf := median(runs), median(frozen)
	verdict := "MISS"
	if mr < *target {
		verdict = "PASS"
	}
	fmt.Printf("RESULT sequencer overhead (in-process, %d runs): median Run %.2fms (writers blocked: median %.2fms, max %.2fms) (target < %v) %s\n",
		*n, ms(mr), ms(mf), ms(slices.Max(frozen)), *target, verdict)
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
