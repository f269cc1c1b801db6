package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// resetStaleTracing undoes the ftrace blk tracing that a daemon killed
// before its tracer's Stop left enabled on device: the disk's
// trace/enable, and current_tracer when no disk is traced any more.
// Package tracer refuses to start over such leftovers (it cannot tell
// them from another tool's); the daemon can, since its running marker
// names the dead process that set them up. Only call it for devices that
// process traced.
func resetStaleTracing(device string) error {
	real, err := filepath.EvalSymlinks(device)
	if err != nil {
		return err
	}
	sys, err := filepath.EvalSymlinks(filepath.Join("/sys/class/block", filepath.Base(real)))
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(sys, "partition")); err == nil {
		sys = filepath.Dir(sys) // tracing is set on the whole disk
	}
	var errs []error
	enable := filepath.Join(sys, "trace", "enable")
	if v, err := os.ReadFile(enable); err == nil && strings.TrimSpace(string(v)) == "1" {
		errs = append(errs, os.WriteFile(enable, []byte("0"), 0))
	}
	for _, dir := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
		cur := filepath.Join(dir, "current_tracer")
		v, err := os.ReadFile(cur)
		if err != nil || strings.TrimSpace(string(v)) != "blk" {
			continue
		}
		if others, _ := filepath.Glob("/sys/block/*/trace/enable"); !anyEnabled(others) {
			errs = append(errs, os.WriteFile(cur, []byte("nop"), 0))
		}
		break
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("linuxagent: resetting stale tracing of %s: %w", device, err)
	}
	return nil
}

func anyEnabled(files []string) bool {
	for _, f := range files {
		if v, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(v)) == "1" {
			return true
		}
	}
	return false
}

// processAlive reports whether a process with pid exists.
func processAlive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}
