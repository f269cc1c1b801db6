package tracer

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// A session changes a few global tracefs settings for its time (see
// newFtraceSession) and puts them back when it stops. A process that dies
// first, killed or crashed, cannot: the settings would stay changed, and
// the next session would take them for the machine's own and keep them
// for ever. So before it changes anything, a session records what it is
// about to change, with the old values, in undoPath; its stop removes the
// record once the old values are back. The next session that finds the
// record of a process that no longer runs puts back each setting that
// still holds the value that process wrote (one that differs was changed
// since, by someone else, and is left alone), and removes the record.
//
// A process that dies while tracing also leaves current_tracer at blk, and
// Start refuses that (ErrBusy: it cannot tell it from another tool's).
// The record is acted on once the caller has reset it, as linuxagent
// does from its running marker.
//
// The record lives on /run, which is cleared at boot, as tracefs settings
// are. It also names the boot: on a system whose /run persists, a record
// of another boot is dropped without restoring anything, since the
// settings went back to the kernel's defaults at boot.

// undoPath is where a session records the settings it changed. A
// variable for the tests.
var undoPath = "/run/blockimage/tracer-ftrace-settings"

// A settingChange is one tracefs setting a session changes.
type settingChange struct {
	name string // relative to tracefs; one of undoableSettings
	old  string // the value before the session
	ours string // the value the session writes
}

// undoableSettings are the settings a record may name: a damaged or
// foreign record cannot make a session write anywhere else.
var undoableSettings = map[string]bool{
	"buffer_size_kb":         true,
	"buffer_percent":         true,
	"options/pause-on-trace": true,
}

// An undoRecord is the content of undoPath.
type undoRecord struct {
	pid     int
	start   string // the process's start time (/proc/PID/stat), against pid reuse
	boot    string // /proc/sys/kernel/random/boot_id
	changes []settingChange
}

func (r undoRecord) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "pid %d\nstart %s\nboot %s\n", r.pid, r.start, r.boot)
	for _, c := range r.changes {
		fmt.Fprintf(&b, "set %s %s %s\n", c.name, c.old, c.ours)
	}
	return b.String()
}

func parseUndoRecord(s string) (undoRecord, error) {
	var r undoRecord
	for line := range strings.Lines(s) {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "pid":
			n, err := strconv.Atoi(f[1])
			if err != nil || n <= 0 {
				return r, fmt.Errorf("bad pid %q", f[1])
			}
			r.pid = n
		case len(f) == 2 && f[0] == "start":
			r.start = f[1]
		case len(f) == 2 && f[0] == "boot":
			r.boot = f[1]
		case len(f) == 4 && f[0] == "set" && undoableSettings[f[1]]:
			r.changes = append(r.changes, settingChange{name: f[1], old: f[2], ours: f[3]})
		default:
			return r, fmt.Errorf("bad line %q", strings.TrimSpace(line))
		}
	}
	if r.pid == 0 || r.start == "" {
		return r, errors.New("no process named")
	}
	return r, nil
}

// ownUndoRecord is the record of this process for changes.
func ownUndoRecord(changes []settingChange) undoRecord {
	return undoRecord{pid: os.Getpid(), start: processStart(os.Getpid()), boot: bootID(), changes: changes}
}

// writeUndoRecord replaces undoPath with r, atomically.
func writeUndoRecord(r undoRecord) error {
	for _, c := range r.changes {
		if !undoableSettings[c.name] || len(strings.Fields(c.old)) != 1 || len(strings.Fields(c.ours)) != 1 {
			return fmt.Errorf("tracer: cannot record setting %s %q -> %q", c.name, c.old, c.ours)
		}
	}
	if err := os.MkdirAll(filepath.Dir(undoPath), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(undoPath), filepath.Base(undoPath)+".*")
	if err != nil {
		return err
	}
	_, err = tmp.WriteString(r.String())
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), undoPath)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// removeOwnUndoRecord removes undoPath if it is this process's record:
// another process that started a session since has replaced it.
func removeOwnUndoRecord() {
	b, err := os.ReadFile(undoPath)
	if err != nil {
		return
	}
	if r, err := parseUndoRecord(string(b)); err == nil && r.pid == os.Getpid() {
		os.Remove(undoPath)
	}
}

// restoreStaleSettings puts back the settings that a session of a process
// that no longer runs changed and did not restore, and removes its record.
// Call it with current_tracer at nop: nobody traces.
func restoreStaleSettings(tracefs string) error {
	b, err := os.ReadFile(undoPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	r, err := parseUndoRecord(string(b))
	if err != nil {
		os.Remove(undoPath)
		return fmt.Errorf("tracer: %s: %w (removed)", undoPath, err)
	}
	if r.boot != bootID() {
		// The settings went back to the kernel's at boot.
		return os.Remove(undoPath)
	}
	// Another process that runs restores them itself. This process runs
	// no session now (sessions are per process), so a record of its own
	// is one whose restore failed: try again.
	if r.pid != os.Getpid() && r.start == processStart(r.pid) {
		return nil
	}
	var errs []error
	for _, c := range r.changes {
		p := filepath.Join(tracefs, c.name)
		cur, err := readSysString(p)
		if err != nil || expandedKB(cur) != c.ours {
			continue // changed since by someone else, or gone
		}
		if err := writeFile(p, c.old); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tracer: restoring the settings of a session of pid %d that did not stop: %w", r.pid, err)
	}
	return os.Remove(undoPath)
}

// processStart returns the start time of process pid (field 22 of
// /proc/PID/stat, in clock ticks since boot), or "" when it does not run.
func processStart(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// The command name, field 2, is in parentheses and may hold spaces
	// and parentheses itself: count from the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return ""
	}
	return f[19] // field 22: fields 3 onwards follow the ')'
}

func bootID() string {
	s, err := readSysString("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "unknown"
	}
	return s
}
