package testenv

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Sweep releases what test processes that no longer exist left under
// [BaseDir]: it thaws and unmounts their mounts, detaches their loop
// devices, removes their libvirt guests and deletes their files. Resources
// of live processes are never touched. [Main] calls it before the tests run.
func Sweep() {
	entries, err := os.ReadDir(BaseDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, ok := runDirPID(e.Name())
		if !ok || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		dir := filepath.Join(BaseDir(), e.Name())
		for _, mp := range mountsUnder(dir) {
			_ = exec.Command("fsfreeze", "--unfreeze", mp).Run()
			if exec.Command("umount", mp).Run() != nil {
				_ = exec.Command("umount", "--lazy", mp).Run()
			}
		}
		for _, dev := range loopDevicesBackedUnder(dir) {
			_ = exec.Command("losetup", "--detach", dev).Run()
		}
		pidFiles, _ := filepath.Glob(filepath.Join(dir, "*", "nbd-server.pid"))
		for _, pf := range pidFiles {
			if daemon := readPIDFile(pf); daemon > 0 && cmdlineMentions(daemon, dir) {
				killDaemon(daemon)
			}
		}
		sweepGuests(pid)
		os.RemoveAll(dir)
	}
}

// runDirPID extracts PID from a directory name run-PID-suffix.
func runDirPID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, "run-")
	if !ok {
		return 0, false
	}
	pidStr, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(pidStr)
	return pid, err == nil && pid > 0
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// mountsUnder lists mount points below dir, deepest first so that nested
// mounts come off before their parents.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var mps []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mps = append(mps, mp)
		}
	}
	for i, j := 0, len(mps)-1; i < j; i, j = i+1, j-1 {
		mps[i], mps[j] = mps[j], mps[i]
	}
	return mps
}

// unescapeMountinfo undoes the octal escapes (\040 for space and so on)
// that /proc/self/mountinfo applies to paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// loopDevicesBackedUnder lists the loop devices whose backing file lies
// below dir.
func loopDevicesBackedUnder(dir string) []string {
	matches, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var devs []string
	for _, m := range matches {
		data, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		backing := strings.TrimSuffix(strings.TrimSpace(string(data)), " (deleted)")
		if strings.HasPrefix(backing, dir+"/") {
			name := filepath.Base(filepath.Dir(filepath.Dir(m)))
			devs = append(devs, "/dev/"+name)
		}
	}
	return devs
}

// cmdlineMentions reports whether process pid's command line contains s,
// so that a recycled PID is never killed.
func cmdlineMentions(pid int, s string) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return err == nil && strings.Contains(string(data), s)
}
