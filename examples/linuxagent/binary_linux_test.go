package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/blockimage/blockimage/blockdev"
	"github.com/blockimage/blockimage/examples/linuxagent/internal/agentapi"
	"github.com/blockimage/blockimage/internal/testenv"
)

func TestMain(m *testing.M) {
	blockdev.Main()
	testenv.Main(m)
}

// buildAgent builds the linuxagent binary, as a user would, into a
// temporary directory.
func buildAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "linuxagent")
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.Command(gobin, "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// agentCmd runs the binary with the daemon's socket and state directory
// pointed at the test's own.
func agentCmd(t *testing.T, bin, stateDir string, args ...string) (stdout string, err error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "LINUXAGENT_STATE_DIR="+stateDir, "LINUXAGENT_SOCKET="+filepath.Join(stateDir, "api.sock"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	t.Logf("linuxagent %v:\n%s%s", args, errb.String(), out.String())
	return out.String(), err
}

// TestBinaryBackupAndRestore runs the first command of the README on a
// mounted ext4 with files: a full backup to a local image (served by the
// embedded NBD server), then a restore whose files match.
func TestBinaryBackupAndRestore(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.LoopDevices, testenv.Mkfs("ext4"), testenv.Mountable("ext4"), testenv.Commands("e2fsck"))
	testenv.Exclusive(t, "ftrace") // the backup traces the device
	bin := buildAgent(t)
	dev := testenv.NewFilesystem(t, "ext4", 128<<20)
	testenv.FillFiles(t, dev.MountPoint, testenv.FillOptions{Seed: 4, Files: 30})
	want := testenv.TreeDigest(t, dev.MountPoint)
	dir := testenv.TempDir(t)
	state := filepath.Join(dir, "state") // no daemon there: the backup runs in the CLI
	img := filepath.Join(dir, "backup.img")

	out, err := agentCmd(t, bin, state, "backup", dev.Path, "--to", img, "--json")
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	var res agentapi.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("backup --json printed %q: %v", out, err)
	}
	if res.Mode != agentapi.Full || !res.Consistent || !res.Frozen || res.Filesystem != "ext4" || res.BytesSent >= dev.Size {
		t.Fatalf("backup result %+v", res)
	}

	// The loop device's backing file, while the loop device is mounted,
	// would be copied unfrozen as it changes: refused, naming the device.
	cmd := exec.Command(bin, "backup", dev.Image, "--to", filepath.Join(dir, "file.img"), "--state-dir", state)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "back up "+dev.Path+" instead") {
		t.Errorf("backup of a mounted loop device's backing file: %v, output %q", err, out)
	}

	restored := filepath.Join(dir, "restored.img")
	if _, err := agentCmd(t, bin, state, "restore", "--from", img, restored); err != nil {
		t.Fatalf("restore: %v", err)
	}
	rl := testenv.AttachLoop(t, restored)
	rl.FSType = "ext4"
	mp := rl.Mount(t, "ro", "noload")
	got := testenv.TreeDigest(t, mp)
	rl.Unmount(t)
	if d := testenv.TreeDiff(want, got); d != "" {
		t.Fatalf("restored tree: %s", d)
	}
	if out, err := exec.Command("e2fsck", "-fn", restored).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn on the restored image: %v\n%s", err, out)
	}
}
