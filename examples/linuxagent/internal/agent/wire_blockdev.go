package agent

import (
	"context"
	"os"
	"time"

	"github.com/blockimage/blockimage/blockdev"
)

func init() {
	System.Open = openBlockdev
	System.Mounts = mountsBlockdev
}

// openBlockdev opens a block device with O_DIRECT: the filesystem writes
// around the block device's page cache, so a cached read could return
// data older than a write the tracer already reported. An image file is
// read through the page cache, which its writers share.
func openBlockdev(path string, write bool) (Device, error) {
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	if !isRegularFile(path) {
		flag |= oDirect
	}
	return blockdev.Open(path, flag)
}

func mountsBlockdev(device string) ([]Mount, error) {
	ms, err := blockdev.MountsOf(device)
	if err != nil {
		return nil, err
	}
	out := make([]Mount, len(ms))
	for i, m := range ms {
		out[i] = Mount{MountPoint: m.MountPoint, FSType: m.FSType}
	}
	return out, nil
}

func init() { System.Sequence = sequenceBlockdev }

// sequenceBlockdev runs the blockdev sequencer. The agent handles SIGINT
// and SIGTERM itself (it cancels the backup), so the sequencer thaws and
// cancels the critical section on them without re-raising.
func sequenceBlockdev(ctx context.Context, device string, deadline time.Duration, flushTracer func(context.Context) error, critical func(context.Context) error) (FreezeReport, error) {
	s := blockdev.Sequencer{Device: device, Deadline: deadline, FlushTracer: flushTracer, SignalsHandled: true}
	rep, err := s.Run(ctx, critical)
	return FreezeReport{Frozen: rep.Frozen, MountPoint: rep.MountPoint, FrozenFor: rep.FrozenFor}, err
}
