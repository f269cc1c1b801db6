package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
)

func qemuIO(t *testing.T, format, path, cmd string) {
	t.Helper()
	if out, err := exec.Command("qemu-io", "-f", format, "-c", cmd, path).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io %s %q: %v: %s", path, cmd, err, out)
	}
}

func qemuImg(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestBlockDiskAndBackingChain backs up a running guest whose disks are a
// loop block device and a qcow2 overlay on a backing file: the block disk
// is stored and restored as a raw image file, the chain is flattened, and
// the guest resumes from memory on the restored, standalone images.
func TestBlockDiskAndBackingChain(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.LoopDevices, testenv.Libvirtd, testenv.Commands("qemu-img", "qemu-io"))
	work := testenv.TempDir(t)
	loop := testenv.NewLoopDevice(t, 8<<20)
	qemuIO(t, "raw", loop.Path, "write -P 0x5a 1M 512k")

	base := filepath.Join(work, "base.qcow2")
	overlay := filepath.Join(work, "overlay.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", base, "16M")
	qemuIO(t, "qcow2", base, "write -P 0xab 0 2M")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay)
	qemuIO(t, "qcow2", overlay, "write -P 0xcd 1M 2M")

	g := testenv.VirtDefineGuest(t, fmt.Sprintf(`    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%s'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
`, loop.Path, overlay), loop.Path, overlay)
	g.Start(t)

	backupDir := filepath.Join(work, "backup")
	r := runOK(t, exitOK, "backup", "--destination-path", backupDir, "--domain-names", g.Name, "--json")
	d := r.domain(t, g.Name)
	if !d.OK || len(d.Disks) != 2 || d.Disks[0].Size != 8<<20 || !d.Disks[1].Flattened || d.Disks[0].Flattened {
		t.Fatalf("summary %+v", d)
	}
	if s := state(t, g.Name); s != "running" {
		t.Fatalf("guest %q after backup", s)
	}
	storedRaw := filepath.Join(backupDir, g.Name+".vda.raw")
	storedQcow := filepath.Join(backupDir, g.Name+".vdb.qcow2")
	qemuImgCompare(t, "raw", loop.Path, storedRaw)
	qemuImgCompare(t, "qcow2", overlay, storedQcow)
	var info []map[string]any
	if err := json.Unmarshal([]byte(qemuImg(t, "info", "--backing-chain", "--output=json", storedQcow)), &info); err != nil {
		t.Fatal(err)
	}
	if len(info) != 1 {
		t.Fatalf("stored image still has a backing chain: %v", info)
	}
	if m := readMeta(t, backupDir); len(m.Domain(g.Name).Disks[1].BackingChain) != 1 || m.Domain(g.Name).Disks[1].BackingChain[0] != base {
		t.Fatalf("metadata does not name the backing file: %+v", m.Domain(g.Name).Disks[1])
	}

	forget(t, g.Name)
	dest := filepath.Join(work, "restored")
	runOK(t, exitOK, "restore", "--source-path", backupDir, "--destination-path", dest, "--allow-autorun")
	if s := state(t, g.Name); s != "running" {
		t.Fatalf("guest %q after restore --allow-autorun", s)
	}
	blk := testenv.Virsh(t, "domblklist", g.Name, "--details")
	if strings.Contains(blk, loop.Path) || regexp.MustCompile(`(?m)^\s*block\s`).MatchString(blk) || !strings.Contains(blk, filepath.Join(dest, g.Name+".vda.raw")) {
		t.Fatalf("restored guest disks:\n%s", blk)
	}
	qemuImgCompare(t, "raw", loop.Path, filepath.Join(dest, g.Name+".vda.raw"))
	qemuImgCompare(t, "qcow2", overlay, filepath.Join(dest, g.Name+".vdb.qcow2"))
	if x := testenv.Virsh(t, "dumpxml", g.Name); strings.Contains(x, base) {
		t.Fatalf("restored guest still refers to the backing file %s", base)
	}
	if _, err := os.Stat(filepath.Join(dest, g.Name+".sav")); err != nil {
		t.Fatal(err)
	}
}
