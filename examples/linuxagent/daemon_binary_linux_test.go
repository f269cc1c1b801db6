package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockimage/blockimage/examples/linuxagent/internal/agentapi"
	"github.com/blockimage/blockimage/internal/testenv"
)

// TestBinaryDaemon drives the daemon binary as an operator would: track a
// mounted ext4, full backup and incremental through the CLI, a clean
// restart that keeps tracking, a SIGKILL that forces a diff, and a restore
// whose files match.
func TestBinaryDaemon(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.LoopDevices, testenv.Mkfs("ext4"), testenv.Mountable("ext4"), testenv.Commands("fsfreeze"))
	testenv.Exclusive(t, "ftrace")
	bin := buildAgent(t)
	dev := testenv.NewFilesystem(t, "ext4", 128<<20, "-E", "lazy_itable_init=0,lazy_journal_init=0")
	testenv.FillFiles(t, dev.MountPoint, testenv.FillOptions{Seed: 5, Files: 20})
	dir := testenv.TempDir(t)
	state := filepath.Join(dir, "state")
	img := filepath.Join(dir, "backup.img")

	var daemon *exec.Cmd
	start := func() {
		t.Helper()
		daemon = exec.Command(bin, "daemon", "--track", dev.Path)
		daemon.Env = append(os.Environ(), "LINUXAGENT_STATE_DIR="+state, "LINUXAGENT_SOCKET="+filepath.Join(state, "api.sock"))
		logf, err := os.OpenFile(filepath.Join(dir, "daemon.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer logf.Close()
		daemon.Stderr = logf
		if err := daemon.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- daemon.Wait() }()
		// Wait until it answers (or died).
		for {
			select {
			case err := <-exited:
				t.Fatalf("daemon exited at start: %v", err)
			default:
			}
			if _, err := os.Stat(filepath.Join(state, "api.sock")); err == nil {
				if _, err := agentCmd(t, bin, state, "devices"); err == nil {
					break
				}
			}
			time.Sleep(50 * time.Millisecond) // polling for start-up, not a timing assertion
		}
		t.Cleanup(func() { daemon.Process.Kill() })
		daemonExited = exited
	}
	backup := func(mode agentapi.Mode) agentapi.Result {
		t.Helper()
		out, err := agentCmd(t, bin, state, "backup", dev.Path, "--to", img, "--mode", string(mode), "--json")
		if err != nil {
			t.Fatalf("%s backup: %v", mode, err)
		}
		var res agentapi.Result
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("%s backup printed %q: %v", mode, out, err)
		}
		return res
	}
	change := func(seed uint64) {
		testenv.FillFiles(t, filepath.Join(dev.MountPoint, "more"), testenv.FillOptions{Seed: seed, Files: 5})
	}

	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "daemon.log"))
			t.Logf("daemon log:\n%s", log)
		}
	})
	start()
	if res := backup(agentapi.Full); res.Mode != agentapi.Full || !res.Frozen {
		t.Fatalf("full: %+v", res)
	}
	change(6)
	if res := backup(agentapi.Incremental); res.Mode != agentapi.Incremental {
		t.Fatalf("incremental: %+v", res)
	}
	if out, err := agentCmd(t, bin, state, "status"); err != nil || !strings.Contains(out, "succeeded") {
		t.Fatalf("status: %v: %s", err, out)
	}

	// Clean restart: nothing writes while no tracer runs, so the set goes
	// on. The filesystem may write back metadata at any time, even after
	// a sync, so the restart happens inside a freeze.
	fsfreeze(t, "--freeze", dev.MountPoint)
	daemon.Process.Signal(syscall.SIGTERM)
	if err := <-daemonExited; err != nil {
		t.Fatalf("daemon stop: %v", err)
	}
	start()
	fsfreeze(t, "--unfreeze", dev.MountPoint)
	change(7)
	if res := backup(agentapi.Incremental); res.Mode != agentapi.Incremental {
		t.Fatalf("incremental after a clean restart: %+v", res)
	}

	// Unclean stop: the next incremental is a diff, and says why.
	daemon.Process.Kill()
	<-daemonExited
	change(8)
	start()
	res := backup(agentapi.Incremental)
	if res.Mode != agentapi.Diff || !strings.Contains(res.FallbackReason, "did not stop cleanly") {
		t.Fatalf("incremental after SIGKILL: %+v", res)
	}
	syncfs(t, dev.MountPoint)
	want := testenv.TreeDigest(t, dev.MountPoint)
	if res := backup(agentapi.Incremental); res.Mode != agentapi.Incremental {
		t.Fatalf("incremental after the diff: %+v", res)
	}
	daemon.Process.Signal(syscall.SIGTERM)
	<-daemonExited

	restored := filepath.Join(dir, "restored.img")
	if _, err := agentCmd(t, bin, state, "restore", "--from", img, restored); err != nil {
		t.Fatal(err)
	}
	rl := testenv.AttachLoop(t, restored)
	rl.FSType = "ext4"
	got := testenv.TreeDigest(t, rl.Mount(t, "ro", "noload"))
	rl.Unmount(t)
	if d := testenv.TreeDiff(want, got); d != "" {
		t.Fatalf("restored tree: %s", d)
	}
}

var daemonExited chan error

func syncfs(t *testing.T, dir string) {
	t.Helper()
	if out, err := exec.Command("sync", "-f", dir).CombinedOutput(); err != nil {
		t.Fatalf("sync -f %s: %v: %s", dir, err, out)
	}
}

func fsfreeze(t *testing.T, flag, dir string) {
	t.Helper()
	if out, err := exec.Command("fsfreeze", flag, dir).CombinedOutput(); err != nil {
		t.Fatalf("fsfreeze %s %s: %v: %s", flag, dir, err, out)
	}
}
