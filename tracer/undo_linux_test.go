package tracer

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeTracefs makes a directory with the settings files a record may name.
func fakeTracefs(t *testing.T, values map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, v := range values {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func useUndoPath(t *testing.T) {
	t.Helper()
	old := undoPath
	undoPath = filepath.Join(t.TempDir(), "run", "tracer-ftrace-settings")
	t.Cleanup(func() { undoPath = old })
}

func settingsOf(t *testing.T, dir string, names ...string) string {
	t.Helper()
	var got []string
	for _, n := range names {
		v, err := readSysString(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, n+"="+v)
	}
	return strings.Join(got, " ")
}

// deadPid returns the pid of a process that ran and was reaped.
func deadPid(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

var allUndoable = []string{"buffer_size_kb", "buffer_percent", "options/pause-on-trace"}

func TestStaleSettingsRestored(t *testing.T) {
	useUndoPath(t)
	dir := fakeTracefs(t, map[string]string{
		"options/pause-on-trace": "0",                  // as the dead session left it
		"buffer_size_kb":         "7 (expanded: 2048)", // its value, not allocated
		"buffer_percent":         "30",                 // changed since by someone else
	})
	dead := undoRecord{pid: deadPid(t), start: "1", boot: bootID(), changes: []settingChange{
		{"options/pause-on-trace", "1", "0"},
		{"buffer_size_kb", "1408", "2048"},
		{"buffer_percent", "0", "50"},
	}}
	if err := writeUndoRecord(dead); err != nil {
		t.Fatal(err)
	}
	if err := restoreStaleSettings(dir); err != nil {
		t.Fatal(err)
	}
	want := "buffer_size_kb=1408 buffer_percent=30 options/pause-on-trace=1"
	if got := settingsOf(t, dir, allUndoable...); got != want {
		t.Fatalf("after restoring: %s, want %s", got, want)
	}
	if _, err := os.Stat(undoPath); !os.IsNotExist(err) {
		t.Fatalf("the record is still there: %v", err)
	}
}

func TestLiveSessionsRecordIsLeftAlone(t *testing.T) {
	useUndoPath(t)
	dir := fakeTracefs(t, map[string]string{"options/pause-on-trace": "0"})
	live := undoRecord{pid: os.Getppid(), start: processStart(os.Getppid()), boot: bootID(),
		changes: []settingChange{{"options/pause-on-trace", "1", "0"}}}
	if live.start == "" {
		t.Skip("no parent process to stand for a live session")
	}
	if err := writeUndoRecord(live); err != nil {
		t.Fatal(err)
	}
	if err := restoreStaleSettings(dir); err != nil {
		t.Fatal(err)
	}
	if got := settingsOf(t, dir, "options/pause-on-trace"); got != "options/pause-on-trace=0" {
		t.Fatalf("a live session's setting was restored: %s", got)
	}
	if _, err := os.Stat(undoPath); err != nil {
		t.Fatalf("a live session's record was removed: %v", err)
	}
	// The same record from another boot is dropped, and nothing is
	// restored: the settings went back to the kernel's at boot, and the
	// value the session wrote may be the kernel's default.
	live.boot = "another-boot"
	if err := writeUndoRecord(live); err != nil {
		t.Fatal(err)
	}
	if err := restoreStaleSettings(dir); err != nil {
		t.Fatal(err)
	}
	if got := settingsOf(t, dir, "options/pause-on-trace"); got != "options/pause-on-trace=0" {
		t.Fatalf("a record of another boot was acted on: %s", got)
	}
	if _, err := os.Stat(undoPath); !os.IsNotExist(err) {
		t.Fatalf("a record of another boot was kept: %v", err)
	}
}

func TestDamagedRecordWritesNothing(t *testing.T) {
	useUndoPath(t)
	dir := fakeTracefs(t, map[string]string{"options/pause-on-trace": "0", "tracing_on": "1"})
	for _, rec := range []string{
		"pid 1\nstart 1\nboot x\nset tracing_on 0 1\n",          // a setting no session changes
		"pid 1\nstart 1\nboot x\nset ../../etc/passwd root 0\n", // a path outside
		"start 1\nset options/pause-on-trace 1 0\n",             // no pid
		"pid one\nstart 1\n",
		"\x00\x01garbage",
	} {
		if err := os.MkdirAll(filepath.Dir(undoPath), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(undoPath, []byte(rec), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := restoreStaleSettings(dir); err == nil {
			t.Errorf("record %q: no error", rec)
		}
		if _, err := os.Stat(undoPath); !os.IsNotExist(err) {
			t.Errorf("record %q: not removed (%v)", rec, err)
		}
	}
	if got := settingsOf(t, dir, "options/pause-on-trace", "tracing_on"); got != "options/pause-on-trace=0 tracing_on=1" {
		t.Fatalf("a damaged record changed settings: %s", got)
	}
	if err := restoreStaleSettings(dir); err != nil {
		t.Fatalf("no record: %v", err)
	}
}

func TestUndoRecordRoundTrip(t *testing.T) {
	useUndoPath(t)
	r := ownUndoRecord([]settingChange{{"buffer_percent", "0", "50"}})
	got, err := parseUndoRecord(r.String())
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != r.String() || got.start == "" {
		t.Fatalf("round trip: %q, want %q", got.String(), r.String())
	}
	if err := writeUndoRecord(undoRecord{pid: 1, start: "1", changes: []settingChange{{"buffer_percent", "a b", "50"}}}); err == nil {
		t.Fatal("a value with a space was recorded")
	}
}

func TestOnlyOwnRecordRemoved(t *testing.T) {
	useUndoPath(t)
	other := undoRecord{pid: deadPid(t), start: "1", boot: bootID(),
		changes: []settingChange{{"buffer_percent", "0", "50"}}}
	if err := writeUndoRecord(other); err != nil {
		t.Fatal(err)
	}
	removeOwnUndoRecord()
	if _, err := os.Stat(undoPath); err != nil {
		t.Fatalf("another process's record was removed: %v", err)
	}
	if err := writeUndoRecord(ownUndoRecord(other.changes)); err != nil {
		t.Fatal(err)
	}
	removeOwnUndoRecord()
	if _, err := os.Stat(undoPath); !os.IsNotExist(err) {
		t.Fatalf("our own record was kept: %v", err)
	}
	if left, _ := filepath.Glob(undoPath + ".*"); len(left) > 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}
