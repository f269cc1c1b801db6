package agent

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/blockimage/blockimage/examples/linuxagent/internal/agentapi"
	"github.com/blockimage/blockimage/internal/testenv"
)

// TestDaemonTracksTwoDevices: one daemon tracks an ext4 and an XFS device
// at once (the tracer shares one ftrace session between them), and
// incrementals of each, while both are written, copy exactly what
// changed on that device: the target equals the freeze-point copy on
// every in-use block.
func TestDaemonTracksTwoDevices(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.LoopDevices, testenv.Mkfs("ext4"), testenv.Mkfs("xfs"),
		testenv.Mountable("ext4"), testenv.Mountable("xfs"), testenv.Commands("fsfreeze"))
	testenv.Exclusive(t, "ftrace")
	type device struct {
		fs    *testenv.LoopDevice
		files []string
		image string
		snap  string
	}
	dir := testenv.TempDir(t)
	var devs []*device
	for i, fstype := range []string{"ext4", "xfs"} {
		var mkfsArgs []string
		if fstype == "ext4" {
			mkfsArgs = []string{"-E", "lazy_itable_init=0,lazy_journal_init=0"}
		}
		fs := testenv.NewFilesystem(t, fstype, 160<<20, mkfsArgs...)
		devs = append(devs, &device{
			fs:    fs,
			files: testenv.FillFiles(t, fs.MountPoint, testenv.FillOptions{Seed: uint64(10 + i), Files: 20, MaxSize: 1 << 20}),
			image: filepath.Join(dir, fstype+".img"),
			snap:  filepath.Join(dir, fstype+"-freeze-point.img"),
		})
	}
	var current *device // the device being backed up: the freeze hook copies it
	ctx := context.Background()
	d := NewDaemon(&System, DaemonOptions{StateDir: filepath.Join(dir, "state"), Logf: t.Logf, atFreeze: func(ctx context.Context) error {
		return copyDevice(ctx, current.fs.Path, current.snap)
	}})
	if err := d.Start(ctx, devs[0].fs.Path, devs[1].fs.Path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop(context.Background()) })
	if got := len(d.Devices()); got != 2 {
		t.Fatalf("daemon tracks %d devices, want 2", got)
	}
	var loads []*workload
	for _, dv := range devs {
		loads = append(loads, startWorkload(t, dv.fs.MountPoint, dv.files))
	}
	check := func(dv *device, what string, want agentapi.Mode) {
		t.Helper()
		current = dv
		res, err := d.run(ctx, agentapi.BackupRequest{Device: dv.fs.Path, Target: dv.image, Mode: want}, nil)
		if err != nil {
			t.Fatalf("%s of %s: %v", what, dv.fs.FSType, err)
		}
		if res.Mode != want {
			t.Fatalf("%s of %s ran as %s: %s", what, dv.fs.FSType, res.Mode, res.FallbackReason)
		}
		bad, compared := sameInUse(t, dv.snap, dv.image)
		if bad != 0 {
			t.Fatalf("%s of %s: %d in-use blocks of %d differ from the freeze point", what, dv.fs.FSType, bad, compared/4096)
		}
		t.Logf("%s of %s: %s sent, %d MiB in use exact", what, dv.fs.FSType, fmt.Sprint(res.BytesSent), compared>>20)
	}
	for _, dv := range devs {
		check(dv, "full", agentapi.Full)
	}
	for i := 1; i <= 3; i++ {
		for j, dv := range devs {
			loads[j].ops(50)
			check(dv, fmt.Sprintf("incremental %d", i), agentapi.Incremental)
		}
	}
	for _, w := range loads {
		w.stop(t)
	}
}
