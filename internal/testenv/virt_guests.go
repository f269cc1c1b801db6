package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

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
	dir := TempDir(t)
	g := &Guest{Name: fmt.Sprintf("%s%d-%d", guestPrefix, os.Getpid(), guestSeq.Add(1)), Disks: paths}
	g.XML = fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
%s  </devices>
</domain>
`, g.Name, disksXML)
	xmlPath := filepath.Join(dir, "domain.xml")
	if err := os.WriteFile(xmlPath, []byte(g.XML), 0o644); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	Virsh(t, "define", xmlPath)
	name := g.Name
	track(t, func() { removeGuest(name) })
	return g
}
