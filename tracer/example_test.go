package tracer_test

import (
	"bytes"
	"context"
	"fmt"
	"log"

	"github.com/blockimage/blockimage/tracer"
)

// An incremental backup cycle on a Set: writes land in the open epoch, Cut
// closes it at the consistency point, the pass copies Pending and
// acknowledges only what the target made durable.
func ExampleSet() {
	s := tracer.NewSet(1<<30, 4096)
	s.Add(0, 10000)      // blocks 0-2
	s.Add(1<<20, 4096)   // block 256
	n := s.Cut()         // backup n starts here
	pass := s.Pending(n) // what to copy
	s.Add(4096, 1)       // written again while the pass copies
	// ... copy pass, flush the target ...
	s.Acknowledge(pass, n)
	fmt.Println("backup", n, "copied", pass)
	fmt.Println("next backup copies", s.Pending(s.Cut()))

	var saved bytes.Buffer // survives a restart
	s.WriteTo(&saved)
	r, _ := tracer.ReadSet(&saved)
	fmt.Println("restored", r.Pending(r.Epoch()))
	// Output:
	// backup 1 copied [{0 12288} {1048576 4096}]
	// next backup copies [{4096 4096}]
	// restored [{4096 4096}]
}

// Tracing a device during a backup: the sequencer freezes the filesystem,
// issues BLKFLSBUF, and then Cut is the barrier that closes the epoch.
func ExampleStart() {
	ctx := context.Background()
	t, err := tracer.Start(ctx, "/dev/loop0", tracer.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer t.Stop()
	// ... later, with the filesystem frozen and BLKFLSBUF done:
	n, err := t.Cut(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if ok, why := t.Set().Complete(); !ok {
		log.Fatalf("changes may be missing (%s): take a diff backup", why)
	}
	fmt.Println(t.Set().Pending(n))
}
