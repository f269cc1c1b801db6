package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
	"github.com/blockimage/blockimage/virt"
)

// These tests run the command in-process against libvirt's test driver
// (test:///path/to/config.xml), which simulates a hypervisor inside the
// client library: no root and no libvirtd. The disks are real files; only
// the guests are simulated. The real-qemu tests are in integration_test.go.

const testDriverDomain = `  <domain type='test'>
    <name>%s</name>
    <uuid>%s</uuid>
    <memory>8192</memory>
    <os><type>hvm</type></os>
    <devices>
      <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s'/><target dev='vda'/></disk>
    </devices>
  </domain>
`

func testDriverURI(t *testing.T, domains ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "node.xml")
	if err := os.WriteFile(p, []byte("<node>\n"+strings.Join(domains, "")+"</node>\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return "test://" + p
}

func runInProcess(t *testing.T, code int, args ...string) summary {
	t.Helper()
	var out, errb bytes.Buffer
	got := run(context.Background(), append(args, "--json"), &out, &errb)
	var s summary
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		t.Fatalf("virt-backup %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	if got != code {
		t.Fatalf("virt-backup %s: exit %d, want %d\n%s%s", strings.Join(args, " "), got, code, out.String(), errb.String())
	}
	return s
}

func TestTestDriverBackupRestore(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.raw")
	testenv.WriteRandomFile(t, disk, 1<<20, 7)
	if err := os.Truncate(disk, 8<<20); err != nil {
		t.Fatal(err)
	}
	src := testDriverURI(t, fmt.Sprintf(testDriverDomain, "alpha", "11111111-2222-3333-4444-555555555555", disk))
	backupDir := filepath.Join(dir, "backup")
	s := runInProcess(t, exitOK, "backup", "--hypervisor-uri", src, "--destination-path", backupDir, "--domain-names", "alpha")
	if len(s.Domains) != 1 || !s.Domains[0].Running || len(s.Domains[0].Disks) != 1 || s.Domains[0].Disks[0].Size != 8<<20 {
		t.Fatalf("backup summary %+v", s)
	}
	want, _, err := virt.FileSHA256(context.Background(), disk)
	if err != nil {
		t.Fatal(err)
	}
	if s.Domains[0].Disks[0].SHA256 != want {
		t.Fatalf("backup checksum %s, sha256sum of the disk %s", s.Domains[0].Disks[0].SHA256, want)
	}
	runInProcess(t, exitOK, "verify", "--source-path", backupDir)

	// The same hypervisor still has the domain: refused.
	s = runInProcess(t, exitFailed, "restore", "--hypervisor-uri", src, "--source-path", backupDir, "--destination-path", filepath.Join(dir, "r1"))
	if !strings.Contains(s.Domains[0].Error, "already exists") {
		t.Fatalf("restore over an existing domain: %+v", s.Domains[0])
	}
	// A second backup into the same folder is refused as a whole.
	s = runInProcess(t, exitFatal, "backup", "--hypervisor-uri", src, "--destination-path", backupDir)
	if !strings.Contains(s.Error, "already holds a backup") {
		t.Fatalf("second backup into one folder: %+v", s)
	}
	// An empty hypervisor takes it.
	empty := testDriverURI(t)
	dest := filepath.Join(dir, "restored")
	s = runInProcess(t, exitOK, "restore", "--hypervisor-uri", empty, "--source-path", backupDir, "--destination-path", dest)
	got, _, err := virt.FileSHA256(context.Background(), filepath.Join(dest, "alpha.vda.raw"))
	if err != nil || got != want {
		t.Fatalf("restored disk %s (%v), want %s", got, err, want)
	}
	// Names the backup does not hold fail alone.
	s = runInProcess(t, exitFailed, "restore", "--hypervisor-uri", empty, "--source-path", backupDir, "--destination-path", filepath.Join(dir, "r2"), "--domain-names", "alpha,beta")
	if len(s.Domains) != 2 || s.Domains[0].OK || !s.Domains[1].OK {
		t.Fatalf("restore of alpha,beta: %+v", s.Domains)
	}
}

func TestTestDriverUnsupportedDisk(t *testing.T) {
	dir := t.TempDir()
	uri := testDriverURI(t, `  <domain type='test'>
    <name>netdisk</name>
    <memory>8192</memory>
    <os><type>hvm</type></os>
    <devices>
      <disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='nbd' name='x'><host name='localhost' port='10809'/></source><target dev='vda'/></disk>
    </devices>
  </domain>
`)
	s := runInProcess(t, exitFailed, "backup", "--hypervisor-uri", uri, "--destination-path", filepath.Join(dir, "b"))
	d := s.Domains[0]
	if d.OK || !strings.Contains(d.Error, "unsupported disk") || d.DowntimeSeconds != 0 || d.SaveSeconds != 0 {
		t.Fatalf("network disk: %+v", d)
	}
	if left := listDir(t, filepath.Join(dir, "b")); len(left) != 0 {
		t.Fatalf("refused backup left %v", left)
	}
}

// TestNothingDoneLeavesNoDirectory: a backup that wrote nothing (no such
// domain, hypervisor unreachable) does not leave behind the destination
// directory it created; one that existed is kept.
func TestNothingDoneLeavesNoDirectory(t *testing.T) {
	uri := testDriverURI(t)
	dest := filepath.Join(t.TempDir(), "new", "backup")
	s := runInProcess(t, exitFailed, "backup", "--hypervisor-uri", uri, "--destination-path", dest, "--domain-names", "no-such-domain")
	if len(s.Domains) != 1 || s.Domains[0].OK {
		t.Fatalf("summary: %+v", s)
	}
	if _, err := os.Lstat(dest); !os.IsNotExist(err) {
		t.Fatalf("backup of no domain left %s: %v", dest, err)
	}
	runInProcess(t, exitFatal, "backup", "--hypervisor-uri", "test:///no/such/node.xml", "--destination-path", dest)
	if _, err := os.Lstat(dest); !os.IsNotExist(err) {
		t.Fatalf("backup without a hypervisor left %s: %v", dest, err)
	}
	existing := t.TempDir()
	runInProcess(t, exitFailed, "backup", "--hypervisor-uri", uri, "--destination-path", existing, "--domain-names", "no-such-domain")
	if _, err := os.Lstat(existing); err != nil {
		t.Fatalf("backup removed a directory it did not create: %v", err)
	}
}
