package agent

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockimage/blockimage/examples/linuxagent/internal/agentapi"
	"github.com/blockimage/blockimage/examples/linuxagent/internal/engine"
)

const fakeTarget1 = "nbd://backup.example/one"

func startDaemon(t *testing.T, m *fakeMachine, dir string, track ...string) *Daemon {
	t.Helper()
	d := NewDaemon(&m.Platform, DaemonOptions{StateDir: dir, Logf: t.Logf, Engine: engine.Options{ChunkSize: 64 << 10, ConvergeBytes: 64 << 10}})
	if err := d.Start(context.Background(), track...); err != nil {
		t.Fatal(err)
	}
	return d
}

func backup(t *testing.T, d *Daemon, mode agentapi.Mode, target string) agentapi.Result {
	t.Helper()
	res, err := d.run(context.Background(), agentapi.BackupRequest{Device: fakeDevice, Target: target, Mode: mode}, nil)
	if err != nil {
		t.Fatalf("%s backup: %v", mode, err)
	}
	return res
}

// wantDiffAfterRestart starts the daemon again on dir and checks that its
// first incremental falls back to an exact diff, for reason.
func wantDiffAfterRestart(t *testing.T, m *fakeMachine, dir, reason string) *Daemon {
	t.Helper()
	d := startDaemon(t, m, dir)
	res := backup(t, d, agentapi.Incremental, fakeTarget1)
	if res.Mode != agentapi.Diff || !strings.Contains(res.FallbackReason, reason) {
		t.Fatalf("incremental after a restart: %+v, want a diff because %s", res, reason)
	}
	if !m.exact(fakeTarget1) {
		t.Fatal("the diff after the restart differs from the device")
	}
	return d
}

func TestFullThenIncrementalsWhileWriting(t *testing.T) {
	m := newFakeMachine(4<<20, 1)
	d := startDaemon(t, m, t.TempDir(), fakeDevice)
	stop := m.disk.writer(1)
	defer stop()
	if res := backup(t, d, agentapi.Full, fakeTarget1); res.Mode != agentapi.Full || !res.Frozen {
		t.Fatalf("full: %+v", res)
	}
	if !m.exact(fakeTarget1) {
		t.Fatal("full backup differs from the freeze point")
	}
	for i := range 10 {
		res := backup(t, d, agentapi.Incremental, fakeTarget1)
		if res.Mode != agentapi.Incremental || res.FallbackReason != "" {
			t.Fatalf("incremental %d ran as %s: %s", i, res.Mode, res.FallbackReason)
		}
		if !m.exact(fakeTarget1) {
			t.Fatalf("incremental %d differs from the freeze point", i)
		}
		if res.BytesSent >= m.disk.Size() {
			t.Fatalf("incremental %d sent %d bytes, the whole device", i, res.BytesSent)
		}
	}
}

func (d *fakeDisk) Size() int64 { return int64(len(d.data)) }

func TestIncrementalSendsWhatChanged(t *testing.T) {
	m := newFakeMachine(4<<20, 2)
	d := startDaemon(t, m, t.TempDir(), fakeDevice)
	backup(t, d, agentapi.Full, fakeTarget1)
	rng := rand.New(rand.NewPCG(2, 2))
	changed := map[int]bool{}
	for range 20 {
		for _, b := range m.disk.write(rng) {
			changed[b] = true
		}
	}
	res := backup(t, d, agentapi.Incremental, fakeTarget1)
	if want := int64(len(changed)) * fakeBlock; res.BytesSent != want {
		t.Fatalf("incremental sent %d bytes, %d were written", res.BytesSent, want)
	}
	if !m.exact(fakeTarget1) {
		t.Fatal("incremental differs from the device")
	}
}

func TestIncrementalToAnotherTargetIsADiff(t *testing.T) {
	m := newFakeMachine(2<<20, 3)
	d := startDaemon(t, m, t.TempDir(), fakeDevice)
	backup(t, d, agentapi.Full, fakeTarget1)
	other := "nbd://backup.example/two"
	res := backup(t, d, agentapi.Incremental, other)
	if res.Mode != agentapi.Diff || !strings.Contains(res.FallbackReason, fakeTarget1) {
		t.Fatalf("incremental to a new target: %+v", res)
	}
	if !m.exact(other) {
		t.Fatal("the diff differs from the device")
	}
	// The set now continues from the other target.
	if res := backup(t, d, agentapi.Incremental, other); res.Mode != agentapi.Incremental {
		t.Fatalf("second incremental to %s: %+v", other, res)
	}
}

func TestUntrackedIncrementalIsADiff(t *testing.T) {
	m := newFakeMachine(1<<20, 4)
	d := startDaemon(t, m, t.TempDir())
	res := backup(t, d, agentapi.Incremental, fakeTarget1)
	if res.Mode != agentapi.Diff || res.FallbackReason == "" {
		t.Fatalf("%+v", res)
	}
	if !m.exact(fakeTarget1) {
		t.Fatal("diff differs from the device")
	}
}

func TestLostEventsForceAnExactDiff(t *testing.T) {
	m := newFakeMachine(2<<20, 5)
	d := startDaemon(t, m, t.TempDir(), fakeDevice)
	backup(t, d, agentapi.Full, fakeTarget1)
	tr := m.lastTracer()
	// Writes the tracer missed: the target is stale and only a diff
	// finds out where.
	rng := rand.New(rand.NewPCG(5, 5))
	tr.Stop()
	for range 30 {
		m.disk.write(rng)
	}
	tr.incomplete = "trace buffer overrun"
	res := backup(t, d, agentapi.Incremental, fakeTarget1)
	if res.Mode != agentapi.Diff || !strings.Contains(res.FallbackReason, "overrun") {
		t.Fatalf("%+v", res)
	}
	if !m.exact(fakeTarget1) {
		t.Fatal("the diff after lost events differs from the device")
	}
	if m.lastTracer() == tr {
		t.Fatal("the tracer that lost events was not replaced")
	}
}

func TestCleanRestartKeepsTracking(t *testing.T) {
	m := newFakeMachine(2<<20, 6)
	dir := t.TempDir()
	d := startDaemon(t, m, dir, fakeDevice)
	backup(t, d, agentapi.Full, fakeTarget1)
	rng := rand.New(rand.NewPCG(6, 6))
	for range 10 {
		m.disk.write(rng)
	}
	if err := d.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "running")); !os.IsNotExist(err) {
		t.Fatalf("running marker after a clean stop: %v", err)
	}
	d = startDaemon(t, m, dir)
	if devs := d.Devices(); len(devs) != 1 || !devs[0].Tracking || len(devs[0].Targets) != 1 {
		t.Fatalf("after restart: %+v", devs)
	}
	for range 10 {
		m.disk.write(rng)
	}
	res := backup(t, d, agentapi.Incremental, fakeTarget1)
	if res.Mode != agentapi.Incremental {
		t.Fatalf("incremental after a clean restart: %+v", res)
	}
	if !m.exact(fakeTarget1) {
		t.Fatal("incremental after restart differs from the device")
	}

	// A write while no daemon runs breaks the chain: the next start
	// sees the write counter moved and the incremental becomes a diff.
	if err := d.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	m.disk.write(rng)
	wantDiffAfterRestart(t, m, dir, "while the daemon was stopped")
}

// TestLossFoundAtStopIsNotSaved: a loss that only the tracer's last drain
// at Stop finds must keep the daemon from saving the set, or the next
// start would continue an incremental chain with a gap in it.
func TestLossFoundAtStopIsNotSaved(t *testing.T) {
	m := newFakeMachine(2<<20, 8)
	dir := t.TempDir()
	d := startDaemon(t, m, dir, fakeDevice)
	backup(t, d, agentapi.Full, fakeTarget1)
	m.lastTracer().lossAtStop = "ring buffer overrun"
	if err := d.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	wantDiffAfterRestart(t, m, dir, "overrun")
}

func TestUncleanStopForcesAnExactDiff(t *testing.T) {
	m := newFakeMachine(2<<20, 7)
	dir := t.TempDir()
	d := startDaemon(t, m, dir, fakeDevice)
	backup(t, d, agentapi.Full, fakeTarget1)
	// The daemon dies: no Stop, its tracer is gone, writes go untraced.
	m.lastTracer().Stop()
	rng := rand.New(rand.NewPCG(7, 7))
	for range 10 {
		m.disk.write(rng)
	}
	d = wantDiffAfterRestart(t, m, dir, "did not stop cleanly")
	if res := backup(t, d, agentapi.Incremental, fakeTarget1); res.Mode != agentapi.Incremental {
		t.Fatalf("the diff did not re-establish the chain: %+v", res)
	}
}

func TestDiffSendsOnlyDifferingBlocks(t *testing.T) {
	m := newFakeMachine(2<<20, 8)
	m.mounted = false
	if _, err := m.Run(context.Background(), Backup{Request: agentapi.BackupRequest{Device: fakeDevice, Target: fakeTarget1}}); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(8, 8))
	changed := map[int]bool{}
	for range 5 {
		for _, b := range m.disk.write(rng) {
			changed[b] = true
		}
	}
	res, err := m.Run(context.Background(), Backup{Request: agentapi.BackupRequest{Device: fakeDevice, Target: fakeTarget1, Mode: agentapi.Diff}})
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(len(changed)) * fakeBlock; res.BytesSent != want || !res.Consistent || res.Frozen {
		t.Fatalf("diff sent %d bytes for %d changed; %+v", res.BytesSent, want, res)
	}
	if !m.exact(fakeTarget1) {
		t.Fatal("diff differs from the device")
	}
}
