package testenv

import (
	"fmt"
	"html"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// LibvirtURI is the hypervisor URI of the machine's libvirtd, which
// scripts/setup starts.
const LibvirtURI = "qemu:///system"

// guestPrefix starts the name of every guest a test defines; the PID that
// follows lets [Sweep] remove guests of test processes that were killed.
const guestPrefix = "blockimage-test-"

// Libvirtd is met when libvirtd answers on [LibvirtURI] and qemu can run
// guests. When the daemons are installed but not running, as after a
// reboot, it starts them, as scripts/setup does.
var Libvirtd = Prereq{Name: "libvirtd with qemu (run scripts/setup)", Check: func() error {
	if err := Commands("virsh", "qemu-system-x86_64", "qemu-img").Check(); err != nil {
		return err
	}
	if exec.Command("virsh", "-c", LibvirtURI, "version").Run() == nil {
		return nil
	}
	if err := Root.Check(); err != nil {
		return fmt.Errorf("libvirtd is not running and only root may start it: %w", err)
	}
	for _, daemon := range []string{"virtlogd", "libvirtd"} {
		if exec.Command("pgrep", "-x", daemon).Run() != nil {
			if out, err := exec.Command(daemon, "-d").CombinedOutput(); err != nil {
				return fmt.Errorf("starting %s: %v: %s", daemon, err, out)
			}
		}
	}
	var out []byte
	var err error
	for i := 0; i < 100; i++ {
		if out, err = exec.Command("virsh", "-c", LibvirtURI, "version").CombinedOutput(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("libvirtd does not answer on %s: %v: %s", LibvirtURI, err, out)
}}

// Virsh runs virsh against [LibvirtURI] and returns its output, failing
// the test if it fails.
func Virsh(t testing.TB, args ...string) string {
	t.Helper()
	out, err := virsh(args...)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return out
}

func virsh(args ...string) (string, error) {
	full := append([]string{"-c", LibvirtURI}, args...)
	out, err := exec.Command("virsh", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("virsh %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// GuestDisk describes one disk of a test guest.
type GuestDisk struct {
	// Format is "raw" (default) or "qcow2".
	Format string
	// Size in bytes. Default 16 MiB.
	Size int64
	// Fill, when set, writes this many bytes of pseudo-random data at
	// the start of the disk (through qemu-img for qcow2), so that
	// backups have something to carry.
	Fill int64
}

// GuestOptions configures [DefineGuest]. The zero value is a 64 MiB guest
// with one 16 MiB raw disk and no operating system: the firmware runs and
// finds nothing to boot, which is all a backup test needs of it.
type GuestOptions struct {
	MemoryMiB int
	Disks     []GuestDisk
}

// A Guest is a persistent libvirt domain the test defined.
type Guest struct {
	Name string
	// Disks are the paths of the guest's disk images, in target order
	// (vda, vdb, ...).
	Disks []string
	// XML is the domain XML the guest was defined with.
	XML string
}

var guestSeq atomic.Int64

// DefineGuest creates disk images and defines a persistent qemu guest
// (TCG) on the machine's libvirtd. The guest is destroyed and undefined,
// with its saved state, when the test ends.
func DefineGuest(t testing.TB, o GuestOptions) *Guest {
	t.Helper()
	Require(t, Libvirtd)
	if o.MemoryMiB == 0 {
		o.MemoryMiB = 64
	}
	if len(o.Disks) == 0 {
		o.Disks = []GuestDisk{{}}
	}
	dir := TempDir(t)
	var disks strings.Builder
	var paths []string
	for i, d := range o.Disks {
		if d.Format == "" {
			d.Format = "raw"
		}
		if d.Size == 0 {
			d.Size = 16 << 20
		}
		path := filepath.Join(dir, fmt.Sprintf("disk%d.%s", i, d.Format))
		createDisk(t, path, d)
		paths = append(paths, path)
		fmt.Fprintf(&disks, `    <disk type='file' device='disk'>
      <driver name='qemu' type='%s'/>
      <source file='%s'/>
      <target dev='vd%c' bus='virtio'/>
    </disk>
`, d.Format, html.EscapeString(path), 'a'+i)
	}
	return defineGuest(t, dir, o.MemoryMiB, disks.String(), paths)
}

// VirtDefineGuest defines a persistent qemu guest (TCG, 64 MiB, no
// operating system) like [DefineGuest], but with the <disk> elements the
// test writes itself, for disks DefineGuest does not make: block devices,
// qcow2 images with backing files. paths are the disks' sources, in target
// order, for Guest.Disks. The guest is removed when the test ends; make
// the disks (loop devices, images) before calling it, so that they are
// released after the guest.
func VirtDefineGuest(t testing.TB, disksXML string, paths ...string) *Guest {
	t.Helper()
	Require(t, Libvirtd)
	return defineGuest(t, TempDir(t), 64, disksXML, paths)
}

// defineGuest defines a persistent TCG guest with no operating system and
// the <disk> elements disksXML (whose sources are paths, in target order),
// writing its XML in dir, and removes the guest when the test ends.
func defineGuest(t testing.TB, dir string, memoryMiB int, disksXML string, paths []string) *Guest {
	t.Helper()
	g := &Guest{Name: fmt.Sprintf("%s%d-%d", guestPrefix, os.Getpid(), guestSeq.Add(1)), Disks: paths}
	g.XML = fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>%d</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
%s  </devices>
</domain>
`, g.Name, memoryMiB, disksXML)
	xmlPath := filepath.Join(dir, "domain.xml")
	if err := os.WriteFile(xmlPath, []byte(g.XML), 0o644); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	Virsh(t, "define", xmlPath)
	name := g.Name
	track(t, func() { removeGuest(name) })
	return g
}

func createDisk(t testing.TB, path string, d GuestDisk) {
	t.Helper()
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", d.Format, path, strconv.FormatInt(d.Size, 10)).CombinedOutput(); err != nil {
		t.Fatalf("testenv: qemu-img create %s: %v: %s", path, err, out)
	}
	if d.Fill <= 0 {
		return
	}
	data := path + ".fill"
	WriteRandomFile(t, data, d.Fill, uint64(d.Fill))
	defer os.Remove(data)
	// qemu-io writes through the format driver, so qcow2 disks get real
	// allocated clusters; dd would corrupt them.
	args := []string{"-f", d.Format, "-c", fmt.Sprintf("write -s %s 0 %d", data, d.Fill), path}
	if out, err := exec.Command("qemu-io", args...).CombinedOutput(); err != nil {
		t.Fatalf("testenv: qemu-io %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// Start starts the guest.
func (g *Guest) Start(t testing.TB) {
	t.Helper()
	Virsh(t, "start", g.Name)
}

// State returns the guest's state as virsh domstate prints it: "running",
// "shut off", "paused" and so on.
func (g *Guest) State(t testing.TB) string {
	t.Helper()
	return strings.TrimSpace(Virsh(t, "domstate", g.Name))
}

// removeGuest destroys and undefines a guest with everything libvirt keeps
// for it. It is quiet: the guest may already be gone.
func removeGuest(name string) {
	_, _ = virsh("destroy", name)
	_, _ = virsh("undefine", name, "--managed-save", "--snapshots-metadata", "--checkpoints-metadata", "--nvram")
}

// sweepGuests removes the guests that the test process pid defined.
func sweepGuests(pid int) {
	if _, err := exec.LookPath("virsh"); err != nil {
		return
	}
	if _, err := os.Stat("/var/run/libvirt/libvirt-sock"); err != nil {
		return
	}
	out, err := virsh("list", "--all", "--name")
	if err != nil {
		return
	}
	prefix := fmt.Sprintf("%s%d-", guestPrefix, pid)
	for _, name := range strings.Fields(out) {
		if strings.HasPrefix(name, prefix) {
			removeGuest(name)
		}
	}
}
