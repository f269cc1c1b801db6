package blockdev

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/blockimage/blockimage/internal/testenv"
)

// BenchmarkSequencerOverhead measures the sequencer's own cost on an idle
// loop-mounted ext4 with an empty critical section: per Run (watchdog
// start, syncfs, freeze, BLKFLSBUF, thaw, watchdog exit) and the time
// writers are blocked (Report.FrozenFor). It reports the medians, as the
// issue's target is stated on the median:
//
//	sudo go test -run '^$' -bench SequencerOverhead -benchtime 20x ./blockdev
func BenchmarkSequencerOverhead(b *testing.B) {
	testenv.Require(b, testenv.Root, testenv.LoopDevices, testenv.Mkfs("ext4"), testenv.Mountable("ext4"))
	// No lazy inode table init: its background writes would make the
	// filesystem busy, not idle.
	d := testenv.NewFilesystem(b, "ext4", 64<<20, "-E", "lazy_itable_init=0,lazy_journal_init=0")
	s := &Sequencer{Device: d.Path}
	empty := func(context.Context) error { return nil }
	var runs, frozen []time.Duration
	b.ResetTimer()
	for b.Loop() {
		t := time.Now()
		rep, err := s.Run(context.Background(), empty)
		runs = append(runs, time.Since(t))
		if err != nil {
			b.Fatal(err)
		}
		frozen = append(frozen, rep.FrozenFor)
	}
	b.StopTimer()
	b.ReportMetric(ms(median(runs)), "median-run-ms")
	b.ReportMetric(ms(median(frozen)), "median-frozen-ms")
	b.ReportMetric(ms(slices.Max(frozen)), "max-frozen-ms")
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
