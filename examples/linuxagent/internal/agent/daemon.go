package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/blockimage/blockimage/examples/linuxagent/internal/agentapi"
	"github.com/blockimage/blockimage/examples/linuxagent/internal/engine"
)

// DefaultStateDir is where the daemon keeps its token, the tracked
// devices' change sets and its running marker.
const DefaultStateDir = "/var/lib/linuxagent"

// DaemonOptions configure a [Daemon].
type DaemonOptions struct {
	// StateDir holds the state. Default [DefaultStateDir].
	StateDir string
	// Logf receives what the daemon has to say. Default: discarded.
	Logf func(format string, args ...any)
	// Engine tunes every backup's copy loop.
	Engine engine.Options

	atFreeze func(ctx context.Context) error // see Backup.atFreeze
}

// A Daemon owns the tracers of the devices it tracks and runs the backups
// the API asks for. It keeps, per device, the target of the last backup
// its change set continues from: an incremental to that target copies the
// set; to any other target, or after tracking was interrupted, it falls
// back to a diff and says why.
type Daemon struct {
	p    *Platform
	o    DaemonOptions
	jobs *agentapi.Manager

	mu   sync.Mutex
	devs map[string]*trackedDevice
}

// deviceState is what the daemon persists of a tracked device.
type deviceState struct {
	Device string `json:"device"`
	// Target is the target of the last backup the change set continues
	// from; empty when there is none, with Reason saying why.
	Target string `json:"target,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Saved is true when the change set was saved by a clean stop, and
	// WrittenSectors is the device's write counter at that moment.
	Saved          bool   `json:"saved"`
	WrittenSectors uint64 `json:"written_sectors"`
}

type trackedDevice struct {
	mu     sync.Mutex // serialises backups, restarts and the stop
	state  deviceState
	tracer Tracer // nil when tracing failed, with err
	err    error
}

const noBackupYet = "no backup since tracking began"

// NewDaemon returns a daemon on platform p; Start brings it up.
func NewDaemon(p *Platform, o DaemonOptions) *Daemon {
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	d := &Daemon{p: p, o: o, devs: map[string]*trackedDevice{}}
	d.jobs = agentapi.NewManager(d.run)
	return d
}

// Jobs returns the daemon's job manager.
func (d *Daemon) Jobs() *agentapi.Manager { return d.jobs }

func (d *Daemon) markerPath() string { return filepath.Join(d.o.StateDir, "running") }
func (d *Daemon) devicesDir() string { return filepath.Join(d.o.StateDir, "devices") }

// Start creates the state directory, detects an unclean stop of the
// previous run (its running marker is still there), resumes tracking the
// devices the previous run tracked, and then tracks extra.
func (d *Daemon) Start(ctx context.Context, extra ...string) error {
	if err := os.MkdirAll(d.devicesDir(), 0o700); err != nil {
		return fmt.Errorf("linuxagent: state directory: %w", err)
	}
	marker, err := os.ReadFile(d.markerPath())
	unclean := err == nil
	if pid, err := strconv.Atoi(strings.TrimSpace(string(marker))); unclean && err == nil && pid != os.Getpid() && processAlive(pid) {
		return fmt.Errorf("linuxagent: a daemon (pid %d) already runs with state directory %s", pid, d.o.StateDir)
	}
	if err := writeFileSync(d.markerPath(), []byte(fmt.Sprintf("%d\n", os.Getpid()))); err != nil {
		return fmt.Errorf("linuxagent: running marker: %w", err)
	}
	states, err := d.loadStates()
	if err != nil {
		return err
	}
	for _, st := range states {
		if unclean {
			d.o.Logf("the previous daemon did not stop cleanly: %s falls back to a diff on its next incremental", st.Device)
			st.Target, st.Reason, st.Saved = "", "the daemon did not stop cleanly, so writes may have been missed", false
			// The dead daemon's tracer could not restore the kernel's
			// tracing settings; the new one would take them for
			// another tool's.
			if err := resetStaleTracing(st.Device); err != nil {
				d.o.Logf("%v", err)
			}
		}
		d.resume(ctx, st)
	}
	for _, dev := range extra {
		if _, err := d.Track(dev); err != nil {
			return err
		}
	}
	return nil
}

// resume starts tracking a device the previous run tracked. Its saved
// set is adopted when the previous tracer missed nothing and the device
// was not written while no tracer ran; otherwise the next incremental
// falls back to a diff.
func (d *Daemon) resume(ctx context.Context, st deviceState) {
	t := &trackedDevice{}
	setPath := d.setPath(st.Device)
	t.tracer, t.err = d.p.startTracer(ctx, st.Device, false)
	switch {
	case t.err != nil:
		d.o.Logf("tracking %s: %v", st.Device, t.err)
		st.Target, st.Reason = "", fmt.Sprintf("tracking failed: %v", t.err)
	case st.Target == "":
	case !st.Saved:
		st.Target, st.Reason = "", "the change set was not saved when the daemon stopped"
	default:
		// The kernel's write counter, read after the new tracer's
		// barrier, must not have moved since the stop.
		ferr := t.tracer.Flush(ctx)
		n, err := d.p.WriteCount(st.Device)
		switch {
		case ferr != nil || err != nil:
			st.Target, st.Reason = "", fmt.Sprintf("cannot tell whether the device was written while the daemon was stopped: %v", errors.Join(ferr, err))
		case n != st.WrittenSectors:
			st.Target, st.Reason = "", fmt.Sprintf("the device was written while the daemon was stopped (%d sectors)", n-st.WrittenSectors)
		default:
			if err := d.adopt(t.tracer, setPath); err != nil {
				st.Target, st.Reason = "", fmt.Sprintf("the saved change set is unusable: %v", err)
			}
		}
	}
	st.Saved = false
	t.state = st
	_ = os.Remove(setPath)
	if err := d.saveState(st); err != nil {
		d.o.Logf("%v", err)
	}
	d.mu.Lock()
	d.devs[st.Device] = t
	d.mu.Unlock()
}

func (d *Daemon) adopt(tr Tracer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return tr.Adopt(bufio.NewReader(f))
}

// Stop cancels the running backups, stops the tracers and saves each
// change set with the device's write counter, then removes the running
// marker: the next Start continues from there.
func (d *Daemon) Stop(ctx context.Context) error {
	errs := []error{d.jobs.Close(ctx)}
	d.mu.Lock()
	devs := make([]*trackedDevice, 0, len(d.devs))
	for _, t := range d.devs {
		devs = append(devs, t)
	}
	d.mu.Unlock()
	for _, t := range devs {
		t.mu.Lock()
		errs = append(errs, d.stopDevice(t))
		t.mu.Unlock()
	}
	if err := errors.Join(errs...); err != nil {
		return err // the marker stays: the next start treats the stop as unclean
	}
	return os.Remove(d.markerPath())
}

func (d *Daemon) stopDevice(t *trackedDevice) error {
	if t.tracer == nil {
		return d.saveState(t.state)
	}
	// The counter is read while the tracer still runs: a write that
	// lands in between is traced and counted, which only makes the next
	// start distrust the set. A set that lost events is not worth
	// saving; Stop's last drain checks for losses once more, so ask
	// after it.
	n, cerr := d.p.WriteCount(t.state.Device)
	serr := t.tracer.Stop()
	complete, why := t.tracer.CompleteAtStop()
	st := t.state
	if !complete && st.Target != "" {
		st.Target, st.Reason = "", "tracking lost events: "+why
	}
	if cerr == nil && serr == nil && st.Target != "" {
		if err := d.saveSet(st.Device, t.tracer); err != nil {
			return err
		}
		st.Saved, st.WrittenSectors = true, n
	}
	t.tracer = nil
	return errors.Join(serr, d.saveState(st))
}

// Serve answers the API on l with token until ctx ends.
func (d *Daemon) Serve(ctx context.Context, l net.Listener, token string) error {
	srv := &http.Server{Handler: agentapi.NewHandler(d.jobs, d, token), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Devices reports every tracked device.
func (d *Daemon) Devices() []agentapi.DeviceStatus {
	d.mu.Lock()
	var out []agentapi.DeviceStatus
	ts := make([]*trackedDevice, 0, len(d.devs))
	for _, t := range d.devs {
		ts = append(ts, t)
	}
	d.mu.Unlock()
	for _, t := range ts {
		out = append(out, t.status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Device < out[j].Device })
	return out
}

func (t *trackedDevice) status() agentapi.DeviceStatus {
	if !t.mu.TryLock() {
		// A backup holds the device; its progress says more.
		return agentapi.DeviceStatus{Device: t.state.Device, Tracking: true, Complete: true, Reason: "a backup is running"}
	}
	defer t.mu.Unlock()
	st := agentapi.DeviceStatus{Device: t.state.Device, Tracking: t.tracer != nil}
	if t.tracer == nil {
		st.Reason = fmt.Sprint(t.err)
		return st
	}
	st.Complete, st.Reason = t.tracer.Complete()
	for _, e := range t.tracer.Pending(t.tracer.Cut()) {
		st.ChangedBytes += e.Length
	}
	if t.state.Target != "" {
		st.Targets = []string{t.state.Target}
	} else if st.Reason == "" {
		st.Reason = t.state.Reason
	}
	return st
}

// Track starts tracking device; tracking an already tracked device is a
// no-op.
func (d *Daemon) Track(device string) (agentapi.DeviceStatus, error) {
	device = filepath.Clean(device)
	d.mu.Lock()
	t, ok := d.devs[device]
	d.mu.Unlock()
	if ok {
		return t.status(), nil
	}
	tr, err := d.p.startTracer(context.Background(), device, false)
	if err != nil {
		return agentapi.DeviceStatus{}, fmt.Errorf("linuxagent: tracking %s: %w", device, err)
	}
	t = &trackedDevice{state: deviceState{Device: device, Reason: noBackupYet}, tracer: tr}
	d.mu.Lock()
	if _, dup := d.devs[device]; dup {
		d.mu.Unlock()
		tr.Stop()
		return d.Track(device)
	}
	d.devs[device] = t
	d.mu.Unlock()
	if err := d.saveState(t.state); err != nil {
		d.o.Logf("%v", err)
	}
	d.o.Logf("tracking %s", device)
	return t.status(), nil
}

// Untrack stops tracking device and forgets its state.
func (d *Daemon) Untrack(device string) error {
	device = filepath.Clean(device)
	d.mu.Lock()
	t, ok := d.devs[device]
	delete(d.devs, device)
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s is not tracked", agentapi.ErrNotFound, device)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var err error
	if t.tracer != nil {
		err = t.tracer.Stop()
		t.tracer = nil
	}
	_ = os.Remove(d.setPath(device))
	_ = os.Remove(d.statePath(device))
	return err
}

// run is the manager's RunFunc.
func (d *Daemon) run(ctx context.Context, req agentapi.BackupRequest, progress func(agentapi.Progress)) (agentapi.Result, error) {
	req.Device = filepath.Clean(req.Device)
	b := Backup{Request: req, Progress: progress, Engine: d.o.Engine, atFreeze: d.o.atFreeze,
		Notify: func(s string) { d.o.Logf("%s: %s", req.Device, s) }}
	d.mu.Lock()
	t, ok := d.devs[req.Device]
	d.mu.Unlock()
	if !ok {
		// Not tracked: the backup traces on its own, and an incremental
		// falls back to a diff.
		return d.p.Run(ctx, b)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tracer == nil {
		return agentapi.Result{}, fmt.Errorf("linuxagent: %s is tracked but its tracer failed: %v", req.Device, t.err)
	}
	why := t.state.Reason
	switch {
	case why != "":
	case t.state.Target != req.Target:
		why = fmt.Sprintf("the change set continues from the last backup to %s", t.state.Target)
	}
	if ok, reason := t.tracer.Complete(); !ok {
		// A set that lost events stays lost: start afresh for the diff.
		why = "tracking lost events: " + reason
		t.tracer.Stop()
		t.tracer, t.err = d.p.startTracer(ctx, req.Device, false)
		if t.err != nil {
			t.state.Target, t.state.Reason = "", fmt.Sprintf("tracking failed: %v", t.err)
			d.saveState(t.state)
			return agentapi.Result{}, fmt.Errorf("linuxagent: restarting the tracer of %s: %w", req.Device, t.err)
		}
	}
	if req.Mode != agentapi.Incremental || why != "" {
		// The target is about to change beyond what the set describes.
		t.state.Target, t.state.Reason = "", fmt.Sprintf("a %s backup to %s did not finish", req.Mode, req.Target)
		if req.Mode == "" {
			t.state.Reason = fmt.Sprintf("a backup to %s did not finish", req.Target)
		}
		if err := d.saveState(t.state); err != nil {
			return agentapi.Result{}, err
		}
	}
	b.Changes, b.NoBaseline = t.tracer, why
	res, err := d.p.Run(ctx, b)
	if err == nil {
		t.state.Target, t.state.Reason = req.Target, ""
		if serr := d.saveState(t.state); serr != nil {
			d.o.Logf("%v", serr)
		}
	}
	return res, err
}
