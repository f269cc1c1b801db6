package tracer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/blockimage/blockimage/internal/testenv"
)

// writeDirect writes n bytes of 0xa5 at off with O_DIRECT.
func writeDirect(t *testing.T, dev string, off int64, n int) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// O_DIRECT wants an aligned buffer: cut one out of a larger one.
	raw := make([]byte, n+4096)
	skip := (4096 - int(uintptr(unsafe.Pointer(&raw[0]))%4096)) % 4096
	buf := raw[skip : skip+n]
	for i := range buf {
		buf[i] = 0xa5
	}
	if _, err := f.WriteAt(buf, off); err != nil {
		t.Fatalf("write %s at %d: %v", dev, off, err)
	}
}

// TestTwoDevicesShareTheSession traces two loop devices from one process:
// each set gets its own device's writes and nothing else, one Tracer stops
// while the other goes on, and the last Stop restores the settings.
func TestTwoDevicesShareTheSession(t *testing.T) {
	requireTracing(t)
	ctx := context.Background()
	a := testenv.NewLoopDevice(t, 16<<20)
	b := testenv.NewLoopDevice(t, 32<<20)
	ta, err := Start(ctx, a.Path, Options{Source: Ftrace})
	if err != nil {
		t.Fatal(err)
	}
	defer ta.Stop()
	tb, err := Start(ctx, b.Path, Options{Source: Ftrace})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Stop()

	writeDirect(t, a.Path, 1<<20, 8192)
	writeDirect(t, b.Path, 5<<20, 4096)
	na, err := ta.Cut(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nb, err := tb.Cut(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ta.Set().Pending(na), []Extent{{1 << 20, 8192}}; !equalExtents(got, want) {
		t.Errorf("device a: pending %v, want %v", got, want)
	}
	if got, want := tb.Set().Pending(nb), []Extent{{5 << 20, 4096}}; !equalExtents(got, want) {
		t.Errorf("device b: pending %v, want %v", got, want)
	}

	if err := ta.Stop(); err != nil {
		t.Fatal(err)
	}
	if en, _ := readSysString(filepath.Join("/sys/block", filepath.Base(a.Path), "trace", "enable")); en != "0" {
		t.Errorf("trace/enable of a is %q after its Stop", en)
	}
	if _, why := ta.Set().Complete(); strings.Contains(why, "someone else") {
		t.Errorf("a's own Stop blamed on another tool: %s", why)
	}
	writeDirect(t, b.Path, 9<<20, 4096)
	nb, err = tb.Cut(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tb.Set().Pending(nb), []Extent{{5 << 20, 4096}, {9 << 20, 4096}}; !equalExtents(got, want) {
		t.Errorf("device b after a stopped: pending %v, want %v", got, want)
	}
	if ok, why := tb.Set().Complete(); !ok {
		t.Errorf("device b incomplete: %s", why)
	}
	if err := tb.Stop(); err != nil {
		t.Fatal(err)
	}
	dir := tracefsDir(t)
	if cur, _ := readSysString(filepath.Join(dir, "current_tracer")); cur != "nop" {
		t.Errorf("current_tracer %q after the last Stop", cur)
	}
}

// TestRingResetMarksIncomplete: another tool emptying the ring (writing
// the trace file) discards events silently as far as the overrun counters
// go; the read-events accounting must catch it.
func TestRingResetMarksIncomplete(t *testing.T) {
	requireTracing(t)
	ctx := context.Background()
	d := testenv.NewLoopDevice(t, 16<<20)
	tr := startTracer(t, d.Path, Options{Source: Ftrace})
	writeDirect(t, d.Path, 0, 4096)
	if err := tr.Flush(ctx); err != nil { // every reader has now parsed a marker
		t.Fatal(err)
	}
	if ok, why := tr.Set().Complete(); !ok {
		t.Fatalf("incomplete before the reset: %s", why)
	}
	dir := tracefsDir(t)
	if err := writeFile(filepath.Join(dir, "trace"), ""); err != nil {
		t.Fatal(err)
	}
	if err := tr.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	ok, why := tr.Set().Complete()
	if ok {
		t.Fatal("a reset of the ring left the set complete")
	}
	if !strings.Contains(why, "reset") {
		t.Fatalf("incomplete for another reason: %s", why)
	}
}

// TestCompleteAtStop: a loss that only Stop's last drain finds shows in
// CompleteAtStop, and the mark Stop adds for the writes it no longer sees
// does not. A caller that saves the set for a restart relies on both.
func TestCompleteAtStop(t *testing.T) {
	requireTracing(t)
	ctx := context.Background()
	d := testenv.NewLoopDevice(t, 16<<20)
	// With an interval of an hour, only a flush or a stop checks the
	// loss counters.
	o := Options{Source: Ftrace, PollInterval: time.Hour}
	t.Run("clean", func(t *testing.T) {
		tr := startTracer(t, d.Path, o)
		writeDirect(t, d.Path, 0, 4096)
		if err := tr.Stop(); err != nil {
			t.Fatal(err)
		}
		if ok, why := tr.CompleteAtStop(); !ok {
			t.Fatalf("CompleteAtStop: incomplete: %s", why)
		}
		if ok, why := tr.Set().Complete(); ok || !strings.Contains(why, "stopped") {
			t.Fatalf("the stopped tracer's set: complete %v (%s), want incomplete because stopped", ok, why)
		}
	})
	t.Run("loss found by the last drain", func(t *testing.T) {
		tr := startTracer(t, d.Path, o)
		writeDirect(t, d.Path, 0, 4096)
		if err := tr.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if err := writeFile(filepath.Join(tracefsDir(t), "trace"), ""); err != nil { // a reset discards events
			t.Fatal(err)
		}
		if ok, why := tr.Set().Complete(); !ok {
			t.Fatalf("the loss was found before Stop: %s", why)
		}
		if err := tr.Stop(); err != nil {
			t.Fatal(err)
		}
		ok, why := tr.CompleteAtStop()
		if ok || !strings.Contains(why, "reset") || strings.Contains(why, "stopped") {
			t.Fatalf("CompleteAtStop: complete %v (%s), want incomplete because of the reset only", ok, why)
		}
	})
}

func equalExtents(a, b []Extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestSilentDropSettings: settings under which the ring buffer drops
// events without counting them make Start refuse (a CPU outside
// tracing_cpumask) or mark the set incomplete (a resize while tracing).
func TestSilentDropSettings(t *testing.T) {
	requireTracing(t)
	ctx := context.Background()
	dir := tracefsDir(t)
	d := testenv.NewLoopDevice(t, 16<<20)

	maskPath := filepath.Join(dir, "tracing_cpumask")
	mask, err := readSysString(maskPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFile(maskPath, "1"); err != nil { // cpu0 only
		t.Fatal(err)
	}
	tr0, err := Start(ctx, d.Path, Options{Source: Ftrace})
	if err == nil {
		tr0.Stop()
	}
	if werr := writeFile(maskPath, mask); werr != nil {
		t.Fatalf("restoring tracing_cpumask %s: %v", mask, werr)
	}
	multiCPU := len(readersOf(t, dir)) > 1
	// A Start that failed after selecting the tracer must put it back,
	// which the kernel refuses while a trace_pipe_raw is open.
	if cur, _ := readSysString(filepath.Join(dir, "current_tracer")); cur != "nop" {
		t.Fatalf("current_tracer %q after a failed Start", cur)
	}
	switch {
	case multiCPU && !errors.Is(err, ErrBusy):
		t.Fatalf("Start with tracing_cpumask 1 on a multi-CPU machine: %v, want ErrBusy", err)
	case !multiCPU && err != nil:
		t.Fatalf("Start on one CPU: %v", err)
	}

	tr := startTracer(t, d.Path, Options{Source: Ftrace, BufferSizeKB: 256})
	if err := writeFile(filepath.Join(dir, "buffer_size_kb"), "512"); err != nil {
		t.Fatal(err)
	}
	if err := tr.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	ok, why := tr.Set().Complete()
	if ok || !strings.Contains(why, "buffer_size_kb") {
		t.Fatalf("a resize during the trace: complete %v %q", ok, why)
	}
}

func readersOf(t *testing.T, dir string) []string {
	cpus, err := filepath.Glob(filepath.Join(dir, "per_cpu", "cpu*"))
	if err != nil {
		t.Fatal(err)
	}
	return cpus
}

func TestInCPUList(t *testing.T) {
	for _, tc := range []struct {
		list string
		cpu  int
		want bool
	}{
		{"0-1", 0, true}, {"0-1", 1, true}, {"0-1", 2, false},
		{"0,2-3,7", 3, true}, {"0,2-3,7", 1, false}, {"0,2-3,7", 7, true}, {"", 0, false},
	} {
		if got := inCPUList(tc.list, tc.cpu); got != tc.want {
			t.Errorf("inCPUList(%q, %d) = %v", tc.list, tc.cpu, got)
		}
	}
}

func TestParseCPUMask(t *testing.T) {
	m, err := parseCPUMask("00000001,80000003")
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 1 || m[0] != 1<<32|1<<31|3 {
		t.Fatalf("mask %x", m)
	}
	if _, err := parseCPUMask("xyz"); err == nil {
		t.Fatal("bad mask accepted")
	}
}

// TestBufferPercentZero checks that a trace started with buffer_percent 0
// runs with the kernel's default and puts 0 back when it stops, and that
// a 0 written during the trace is undone at the next check: with 0, a
// poll finds the ring readable with a single event in it, and readers
// that take complete pages only would spin (measured: 3.8 s of CPU in a
// 2 s trace of 100 writes).
func TestBufferPercentZero(t *testing.T) {
	requireTracing(t)
	dir := tracefsDir(t)
	path := filepath.Join(dir, "buffer_percent")
	old, err := readSysString(path)
	if err != nil {
		t.Skipf("this kernel has no buffer_percent: %v", err)
	}
	defer writeFile(path, old)
	if err := writeFile(path, "0"); err != nil {
		t.Fatal(err)
	}
	d := testenv.NewLoopDevice(t, 16<<20)
	ctx := context.Background()
	tr, err := Start(ctx, d.Path, Options{Source: Ftrace})
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := readSysString(path); p != defaultBufferPercent {
		tr.Stop()
		t.Fatalf("buffer_percent %q during the trace, want %s", p, defaultBufferPercent)
	}
	if err := writeFile(path, "0"); err != nil {
		tr.Stop()
		t.Fatal(err)
	}
	writeDirect(t, d.Path, 1<<20, 4096)
	if err := tr.Flush(ctx); err != nil { // a flush checks the settings
		tr.Stop()
		t.Fatal(err)
	}
	if p, _ := readSysString(path); p != defaultBufferPercent {
		tr.Stop()
		t.Fatalf("buffer_percent %q after a flush, want %s again", p, defaultBufferPercent)
	}
	if ok, why := tr.Set().Complete(); !ok {
		tr.Stop()
		t.Fatalf("set incomplete: %s", why)
	}
	if err := tr.Stop(); err != nil {
		t.Fatal(err)
	}
	if p, _ := readSysString(path); p != "0" {
		t.Fatalf("buffer_percent %q after Stop, want the 0 found at Start", p)
	}
}

// TestSettingChangesMarkIncomplete changes, during a trace, each setting
// that stops or drops recording silently, and checks that the next Flush
// finds it: the checks read files kept open since Start (sysFile), so this
// also checks that the kernel renders them afresh for every read.
func TestSettingChangesMarkIncomplete(t *testing.T) {
	requireTracing(t)
	ctx := context.Background()
	dir := tracefsDir(t)
	d := testenv.NewLoopDevice(t, 16<<20)
	disk := filepath.Join("/sys/block", filepath.Base(d.Path), "trace", "enable")
	for _, tc := range []struct {
		file   string
		before string // the value Start finds, so that Start owns the setting; "": any
		value  string // written during the trace
		reason string
		// The kernel refuses the barrier's markers.
		flushFails bool
	}{
		{disk, "", "0", "disabled by someone else", false},
		{filepath.Join(dir, "tracing_on"), "1", "0", "tracing_on switched off", true},
		// Start clears it only if it is set (the kernel's default; an
		// administrator may have cleared it).
		{filepath.Join(dir, "options", "pause-on-trace"), "1", "1", "pause-on-trace set again", false},
	} {
		t.Run(filepath.Base(filepath.Dir(tc.file))+"/"+filepath.Base(tc.file), func(t *testing.T) {
			if tc.before != "" {
				setForTest(t, tc.file, tc.before) // restored after the tracer's Stop
			}
			tr := startTracer(t, d.Path, Options{Source: Ftrace})
			if err := tr.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if ok, why := tr.Set().Complete(); !ok {
				t.Fatalf("incomplete before any change: %s", why)
			}
			if err := writeFile(tc.file, tc.value); err != nil {
				t.Fatal(err)
			}
			if tc.before != "" {
				// Back before the tracer's Stop checks the settings.
				t.Cleanup(func() {
					if err := writeFile(tc.file, tc.before); err != nil {
						t.Errorf("restoring %s: %v", tc.file, err)
					}
				})
			}
			if err := tr.Flush(ctx); (err != nil) != tc.flushFails {
				t.Fatalf("Flush: %v, want an error: %v", err, tc.flushFails)
			}
			if ok, why := tr.Set().Complete(); ok || !strings.Contains(why, tc.reason) {
				t.Fatalf("after writing %s to %s: complete %v %q, want %q", tc.value, tc.file, ok, why, tc.reason)
			}
		})
	}
}

// TestSettingsCheckedBetweenFlushes: with a poll interval of an hour and
// no Flush, a tool that switches tracing_on off (and on again later) is
// still seen: the session checks the settings every settingsCheckEvery.
func TestSettingsCheckedBetweenFlushes(t *testing.T) {
	requireTracing(t)
	on := filepath.Join(tracefsDir(t), "tracing_on")
	setForTest(t, on, "1") // restored after the tracer's Stop
	d := testenv.NewLoopDevice(t, 16<<20)
	tr := startTracer(t, d.Path, Options{Source: Ftrace, PollInterval: time.Hour})
	if ok, why := tr.Set().Complete(); !ok {
		t.Fatalf("incomplete before any change: %s", why)
	}
	if err := writeFile(on, "0"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		ok, why := tr.Set().Complete()
		if !ok {
			if !strings.Contains(why, "tracing_on switched off") {
				t.Fatalf("incomplete for another reason: %s", why)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("tracing_on off for a minute, and the set is still complete")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := writeFile(on, "1"); err != nil {
		t.Fatal(err)
	}
}

// TestStartRestoresACrashedSessionsSettings: a process killed while it
// traced left pause-on-trace cleared and its record (undoPath). The next
// Start puts the old value back before it clears it again for itself, so
// its Stop restores the machine's value, not the dead session's.
func TestStartRestoresACrashedSessionsSettings(t *testing.T) {
	requireTracing(t)
	dir := tracefsDir(t)
	useUndoPath(t)
	d := testenv.NewLoopDevice(t, 16<<20)
	pause := filepath.Join(dir, "options", "pause-on-trace")
	setForTest(t, pause, "0")
	dead := undoRecord{pid: deadPid(t), start: "1", boot: bootID(),
		changes: []settingChange{{"options/pause-on-trace", "1", "0"}}}
	if err := writeUndoRecord(dead); err != nil {
		t.Fatal(err)
	}

	tr, err := Start(context.Background(), d.Path, Options{Source: Ftrace})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(undoPath)
	if err != nil {
		tr.Stop()
		t.Fatalf("no record while tracing: %v", err)
	}
	rec, err := parseUndoRecord(string(b))
	if err != nil || rec.pid != os.Getpid() || len(rec.changes) == 0 || rec.changes[0].old != "1" {
		tr.Stop()
		t.Fatalf("record while tracing: %+v, %v; want this process's, with pause-on-trace's old value 1", rec, err)
	}
	if v, _ := readSysString(pause); v != "0" {
		tr.Stop()
		t.Fatalf("pause-on-trace %s while tracing, want 0", v)
	}
	if err := tr.Stop(); err != nil {
		t.Fatal(err)
	}
	if v, _ := readSysString(pause); v != "1" {
		t.Fatalf("pause-on-trace %s after Stop, want 1, the value before the crashed session", v)
	}
	if _, err := os.Stat(undoPath); !os.IsNotExist(err) {
		t.Fatalf("the record is still there after Stop: %v", err)
	}
}

// TestRefusedDiskStopsTheNewSession: when the first Tracer's disk cannot
// be added (its blktrace is enabled already, as a killed process leaves
// it), Start fails and the session it set up must go entirely: its
// readers stopped, not left spinning on closed files.
func TestRefusedDiskStopsTheNewSession(t *testing.T) {
	requireTracing(t)
	d := testenv.NewLoopDevice(t, 16<<20)
	enable := filepath.Join("/sys/block", filepath.Base(d.Path), "trace", "enable")
	if err := writeFile(enable, "1"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := writeFile(enable, "0"); err != nil {
			t.Errorf("disabling %s: %v", enable, err)
		}
	})
	if _, err := Start(context.Background(), d.Path, Options{Source: Ftrace}); !errors.Is(err, ErrBusy) {
		t.Fatalf("Start with the disk's blktrace enabled: %v, want ErrBusy", err)
	}
	buf := make([]byte, 1<<20)
	if stacks := string(buf[:runtime.Stack(buf, true)]); strings.Contains(stacks, "(*cpuReader).run") {
		t.Fatalf("readers still run after the failed Start:\n%s", stacks)
	}
	if cur, _ := readSysString(filepath.Join(tracefsDir(t), "current_tracer")); cur != "nop" {
		t.Fatalf("current_tracer %q after the failed Start", cur)
	}
	if err := writeFile(enable, "0"); err != nil {
		t.Fatal(err)
	}
	tr := startTracer(t, d.Path, Options{Source: Ftrace})
	if err := tr.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}
