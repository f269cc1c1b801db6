package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockimage/blockimage/internal/testenv"
)

// TestBackupSignalResumesGuest interrupts the backup of a running guest
// while the guest is stopped (its memory saved, its disk being copied), as
// Ctrl-C, or a closed terminal or ssh session (SIGHUP) would: the program
// must resume the guest, report the failure and remove its partial files,
// not die and leave the guest shut off.
func TestBackupSignalResumesGuest(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.Libvirtd)
	work := testenv.TempDir(t)
	g := testenv.DefineGuest(t, testenv.GuestOptions{Disks: []testenv.GuestDisk{{Format: "raw", Size: 64 << 20, Fill: 48 << 20}}})
	g.Start(t)
	bin := binary(t)
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGINT} {
		dest := filepath.Join(work, sig.String())
		cmd := exec.Command(bin, "backup", "--destination-path", dest, "--domain-names", g.Name, "--json")
		var so, se bytes.Buffer
		cmd.Stdout, cmd.Stderr = &so, &se
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		// The hidden copy of the disk exists only while the guest is
		// stopped for the backup: signal then.
		copyFile := filepath.Join(dest, "."+g.Name+".vda.raw.copy")
		var err error
	wait:
		for {
			select {
			case err = <-exited:
				t.Fatalf("%v: backup ended before the guest was stopped: %v\n%s%s", sig, err, so.String(), se.String())
			default:
			}
			if _, serr := os.Lstat(copyFile); serr == nil {
				break wait
			}
			time.Sleep(2 * time.Millisecond)
		}
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		err = <-exited
		if s := state(t, g.Name); s != "running" {
			t.Fatalf("after %v during the backup the guest is %q, want running (resumed)\nexit: %v\n%s%s", sig, s, err, so.String(), se.String())
		}
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != exitFailed || !strings.Contains(so.String(), "context canceled") {
			t.Fatalf("after %v: exit %v, want %d with the cancellation reported\n%s%s", sig, err, exitFailed, so.String(), se.String())
		}
		if left := listDir(t, dest); len(left) != 0 {
			t.Fatalf("after %v the backup left %v", sig, left)
		}
	}
}

// TestBackupManagedSaveWarns backs up a guest stopped with `virsh
// managedsave`: its disks match memory that libvirt keeps elsewhere and
// the backup does not hold, which the summary must say.
func TestBackupManagedSaveWarns(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.Libvirtd)
	work := testenv.TempDir(t)
	g := testenv.DefineGuest(t, testenv.GuestOptions{})
	g.Start(t)
	testenv.Virsh(t, "managedsave", g.Name)
	r := runOK(t, exitOK, "backup", "--destination-path", filepath.Join(work, "b"), "--domain-names", g.Name, "--json")
	d := r.domain(t, g.Name)
	if !d.OK || d.Running || !strings.Contains(strings.Join(d.Warnings, "\n"), "managed save image") {
		t.Fatalf("backup of a managed-saved guest: %+v", d)
	}
	// A guest shut off cleanly has no such warning.
	off := testenv.DefineGuest(t, testenv.GuestOptions{})
	r = runOK(t, exitOK, "backup", "--destination-path", filepath.Join(work, "c"), "--domain-names", off.Name, "--json")
	if d := r.domain(t, off.Name); !d.OK || len(d.Warnings) != 0 {
		t.Fatalf("backup of a shut-off guest: %+v", d)
	}
}
