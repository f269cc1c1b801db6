package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/blockimage/blockimage/internal/testenv"
	"github.com/blockimage/blockimage/virt"
)

func twoDisks() testenv.GuestOptions {
	return testenv.GuestOptions{Disks: []testenv.GuestDisk{
		{Format: "raw", Size: 16 << 20, Fill: 1 << 20},
		{Format: "qcow2", Size: 16 << 20, Fill: 512 << 10},
	}}
}

func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// TestBackupRestore backs up two running guests and a shut-off one
// without compression, and one of the running guests again with
// compression, checks the bad-input refusals against those backups, then
// restores to new paths, with and without --allow-autorun. One test, so
// that the guests (slow to define and start under TCG) serve every check.
func TestBackupRestore(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.Libvirtd, testenv.Commands("qemu-img", "xz"))
	// Made before the guests, so removed after them.
	work := testenv.TempDir(t)
	done := logTime(t, "define and start")
	run1 := testenv.DefineGuest(t, twoDisks())
	run2 := testenv.DefineGuest(t, testenv.GuestOptions{Disks: []testenv.GuestDisk{{Format: "qcow2", Fill: 64 << 10}}})
	off := testenv.DefineGuest(t, twoDisks())
	run1.Start(t)
	run2.Start(t)
	done()

	// An SELinux context on one disk (the kernel stores security.selinux
	// even without a policy loaded), to be found on the restored copy.
	const label = "system_u:object_r:svirt_image_t:s0:c10,c20"
	if err := unix.Setxattr(off.Disks[0], "security.selinux", []byte(label), 0); err != nil {
		t.Fatalf("setting an SELinux context: %v", err)
	}

	backupDir := filepath.Join(work, "backup")
	names := strings.Join([]string{run1.Name, run2.Name, off.Name}, ",")
	r := runOK(t, exitOK, "backup", "--destination-path", backupDir, "--domain-names", names, "--json")
	for _, g := range []*testenv.Guest{run1, run2} {
		d := r.domain(t, g.Name)
		if !d.OK || !d.Running || d.DowntimeSeconds <= 0 || d.SaveSeconds <= 0 || d.DowntimeSeconds < d.SaveSeconds {
			t.Fatalf("running guest summary: %+v", d)
		}
		if s := state(t, g.Name); s != "running" {
			t.Fatalf("%s is %q after backup, want running (resumed from saved memory)", g.Name, s)
		}
		t.Logf("%s: downtime %.2fs (save %.2fs)", g.Name, d.DowntimeSeconds, d.SaveSeconds)
	}
	if d := r.domain(t, off.Name); !d.OK || d.Running || len(d.Disks) != 2 {
		t.Fatalf("shut-off guest summary: %+v", d)
	}
	if s := state(t, off.Name); s != "shut off" {
		t.Fatalf("shut-off guest is %q after backup", s)
	}
	files := strings.Join(listDir(t, backupDir), " ")
	if strings.Contains(files, off.Name+".sav") {
		t.Fatalf("backup holds files it should not: %s", files)
	}
	for _, want := range []string{virt.MetadataFile, run1.Name + ".xml", run1.Name + ".sav", run1.Name + ".vda.raw", run1.Name + ".vdb.qcow2", off.Name + ".xml", off.Name + ".vda.raw"} {
		if !strings.Contains(" "+files+" ", " "+want+" ") {
			t.Fatalf("backup lacks %s: %s", want, files)
		}
	}
	// The stored images are the original disks, sparse.
	qemuImgCompare(t, "raw", off.Disks[0], filepath.Join(backupDir, off.Name+".vda.raw"))
	qemuImgCompare(t, "qcow2", off.Disks[1], filepath.Join(backupDir, off.Name+".vdb.qcow2"))
	if a := allocatedBytes(t, filepath.Join(backupDir, off.Name+".vda.raw")); a > 4<<20 {
		t.Errorf("stored 16 MiB raw disk with 1 MiB of data allocates %d bytes", a)
	}
	checkVerifyData(t, runOK(t, exitOK, "verify", "--source-path", backupDir, "--json"))
	xzDir := compressedBackup(t, work, run1, run2.Name, off.Name)

	// One domain's failure does not stop the others.
	partial := filepath.Join(work, "partial")
	r = runOK(t, exitFailed, "backup", "--destination-path", partial, "--domain-names", "no-such-domain,"+off.Name, "--json")
	if d := r.domain(t, "no-such-domain"); d.OK || !strings.Contains(d.Error, "no such domain") {
		t.Fatalf("missing domain: %+v", d)
	}
	if d := r.domain(t, off.Name); !d.OK {
		t.Fatalf("the existing domain failed with the missing one: %+v", d)
	}
	if m := readMeta(t, partial); len(m.Domains) != 1 || m.Domains[0].Name != off.Name {
		t.Fatalf("partial backup metadata: %+v", m.Domains)
	}

	// --leave-stopped: the guest stays off, its memory in the backup.
	stopped := filepath.Join(work, "stopped")
	r = runOK(t, exitOK, "backup", "--destination-path", stopped, "--domain-names", run2.Name, "--leave-stopped", "--json")
	savAbs, err := filepath.Abs(filepath.Join(stopped, run2.Name+".sav"))
	if err != nil {
		t.Fatal(err)
	}
	if d := r.domain(t, run2.Name); !d.OK || d.State != "shutoff" || d.DowntimeSeconds != 0 || !strings.Contains(strings.Join(d.Warnings, "\n"), "virsh restore "+savAbs) {
		t.Fatalf("--leave-stopped summary: %+v", d)
	}
	if s := state(t, run2.Name); s != "shut off" {
		t.Fatalf("--leave-stopped left the guest %q", s)
	}
	testenv.Virsh(t, "restore", filepath.Join(stopped, run2.Name+".sav"))
	if s := state(t, run2.Name); s != "running" {
		t.Fatalf("guest is %q after virsh restore of its saved memory", s)
	}

	// Restoring over domains that still exist is refused, and writes nothing.
	refused := filepath.Join(work, "refused")
	r = runOK(t, exitFailed, "restore", "--source-path", backupDir, "--destination-path", refused, "--domain-names", off.Name, "--json")
	if d := r.domain(t, off.Name); d.OK || !strings.Contains(d.Error, "already exists") {
		t.Fatalf("restore over an existing domain: %+v", d)
	}
	if left := listDir(t, refused); len(left) != 0 {
		t.Fatalf("refused restore wrote %v", left)
	}

	// The host is lost: the domains are gone.
	for _, g := range []*testenv.Guest{run1, run2, off} {
		forget(t, g.Name)
	}
	t.Run("BadInput", func(t *testing.T) { badInput(t, work, backupDir, run1.Name, run2.Name) })
	t.Run("TruncatedXZ", func(t *testing.T) { truncatedXZ(t, work, xzDir, run1.Name) })

	dest := filepath.Join(work, "restored")
	r = runOK(t, exitOK, "restore", "--source-path", backupDir, "--destination-path", dest, "--allow-autorun", "--domain-names", run1.Name+","+off.Name, "--json")
	if d := r.domain(t, run1.Name); !d.OK || d.State != "running" || len(d.Disks) != 2 {
		t.Fatalf("restore summary: %+v", d)
	}
	if s := state(t, run1.Name); s != "running" {
		t.Fatalf("%s is %q after restore --allow-autorun, want running", run1.Name, s)
	}
	if s := state(t, off.Name); s != "shut off" {
		t.Fatalf("%s is %q after restore, want shut off", off.Name, s)
	}
	for _, g := range []*testenv.Guest{run1, off} {
		qemuImgCompare(t, "raw", g.Disks[0], filepath.Join(dest, g.Name+".vda.raw"))
		qemuImgCompare(t, "qcow2", g.Disks[1], filepath.Join(dest, g.Name+".vdb.qcow2"))
		blk := testenv.Virsh(t, "domblklist", g.Name)
		if !strings.Contains(blk, filepath.Join(dest, g.Name+".vda.raw")) || strings.Contains(blk, g.Disks[0]) {
			t.Fatalf("%s disks after restore:\n%s", g.Name, blk)
		}
	}
	// Original size, mode and holes.
	for _, i := range []int{0, 1} {
		orig, err := os.Stat(off.Disks[i])
		if err != nil {
			t.Fatal(err)
		}
		name := []string{".vda.raw", ".vdb.qcow2"}[i]
		got, err := os.Stat(filepath.Join(dest, off.Name+name))
		if err != nil {
			t.Fatal(err)
		}
		if got.Size() != orig.Size() || got.Mode() != orig.Mode() {
			t.Errorf("restored %s: size %d mode %v, original %d %v", name, got.Size(), got.Mode(), orig.Size(), orig.Mode())
		}
	}
	buf := make([]byte, 256)
	n, err := unix.Getxattr(filepath.Join(dest, off.Name+".vda.raw"), "security.selinux", buf)
	if err != nil || strings.TrimRight(string(buf[:n]), "\x00") != label {
		t.Errorf("restored disk SELinux context %q (%v), want %q", buf[:max(n, 0)], err, label)
	}
	if a := allocatedBytes(t, filepath.Join(dest, off.Name+".vda.raw")); a > 4<<20 {
		t.Errorf("restored 16 MiB raw disk with 1 MiB of data allocates %d bytes", a)
	}
	// The shut-off domain boots from its restored disks.
	done = logTime(t, "start restored")
	testenv.Virsh(t, "start", off.Name)
	done()
	if s := state(t, off.Name); s != "running" {
		t.Fatalf("restored domain does not start: %q", s)
	}
	if _, err := exec.Command("virsh", "-c", testenv.LibvirtURI, "dominfo", run2.Name).CombinedOutput(); err == nil {
		t.Fatalf("--domain-names %s,%s restored %s too", run1.Name, off.Name, run2.Name)
	}

	forget(t, run1.Name)
	restoreCompressed(t, work, xzDir, run1)
}

// badInput runs restores of damaged copies of a good backup: each must
// fail with a clear error and write nothing outside (or inside) the
// destination.
func badInput(t *testing.T, work, good, running1, running2 string) {
	cases := []struct {
		name   string
		damage func(t *testing.T, dir string)
		code   int
		want   string
	}{
		{"missing metadata", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, virt.MetadataFile))
		}, exitFatal, "no backup metadata"},
		{"corrupt metadata", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, virt.MetadataFile), []byte("<virtbackup version='1'><domain name='x'"), 0o644)
		}, exitFatal, "corrupt backup metadata"},
		{"hostile domain name", func(t *testing.T, dir string) {
			editMetadata(t, dir, `name="`+running1+`"`, `name="../../etc"`)
		}, exitFatal, "unsafe name"},
		{"hostile stored file", func(t *testing.T, dir string) {
			editMetadata(t, dir, `file="`+running1+`.vda.raw"`, `file="../../etc/passwd"`)
		}, exitFatal, "unsafe name"},
		{"damaged memory image", func(t *testing.T, dir string) {
			f, err := os.OpenFile(filepath.Join(dir, running1+".sav"), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt([]byte("garbage"), 4096)
			f.Close()
		}, exitFailed, "checksum mismatch"},
		{"memory image of another domain", func(t *testing.T, dir string) {
			// Swap in the other guest's memory and make the metadata agree,
			// so only the image's own XML can tell.
			src := filepath.Join(dir, running2+".sav")
			dst := filepath.Join(dir, running1+".sav")
			if out, err := exec.Command("cp", src, dst).CombinedOutput(); err != nil {
				t.Fatalf("%v %s", err, out)
			}
			m := readMeta(t, dir)
			*m.Domain(running1).Memory = *m.Domain(running2).Memory
			m.Domain(running1).Memory.File = running1 + ".sav"
			writeMeta(t, dir, m)
		}, exitFailed, "holds the memory of domain"},
		{"domain XML with a disk the backup lacks", func(t *testing.T, dir string) {
			// A consistent but hostile backup: its domain XML adds a host
			// file as a disk. Restore must not define a guest on it.
			p := filepath.Join(dir, running1+".xml")
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			x := strings.Replace(string(b), "</devices>", "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/etc/shadow'/><target dev='vdz' bus='virtio'/></disk></devices>", 1)
			if err := os.WriteFile(p, []byte(x), 0o644); err != nil {
				t.Fatal(err)
			}
			m := readMeta(t, dir)
			sum, n, err := virt.FileSHA256(t.Context(), p)
			if err != nil {
				t.Fatal(err)
			}
			m.Domain(running1).XML.SHA256, m.Domain(running1).XML.Size = sum, n
			writeMeta(t, dir, m)
		}, exitFailed, `no new path for disk source "/etc/shadow"`},
		{"damaged disk", func(t *testing.T, dir string) {
			f, err := os.OpenFile(filepath.Join(dir, running1+".vda.raw"), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt([]byte{1}, 8<<20)
			f.Close()
		}, exitFailed, "checksum mismatch"},
		{"damaged second disk", func(t *testing.T, dir string) {
			// vda is restored first, then removed when vdb fails: the
			// summary must not list it as restored.
			f, err := os.OpenFile(filepath.Join(dir, running1+".vdb.qcow2"), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt([]byte{0xff}, 300<<10)
			f.Close()
		}, exitFailed, "checksum mismatch"},
	}
	for i, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			dir := filepath.Join(work, "bad", string(rune('a'+i)))
			os.MkdirAll(filepath.Dir(dir), 0o755)
			copyTree(t, good, dir)
			c.damage(t, dir)
			outer := testenv.TempDir(t)
			dest := filepath.Join(outer, "a", "b", "dest")
			r := runOK(t, c.code, "restore", "--source-path", dir, "--destination-path", dest, "--domain-names", running1)
			if !strings.Contains(r.stdout, c.want) {
				t.Fatalf("output does not say %q:\n%s%s", c.want, r.stdout, r.stderr)
			}
			if left := listDir(t, dest); len(left) != 0 {
				t.Fatalf("failed restore left %v in the destination", left)
			}
			if strings.Contains(r.stdout, dest) {
				t.Fatalf("failed restore lists files it removed:\n%s", r.stdout)
			}
			if got := strings.Join(listDir(t, outer), " "); got != "" && got != "a" {
				t.Fatalf("restore wrote outside its destination: %s", got)
			}
			if got := strings.Join(listDir(t, filepath.Join(outer, "a")), " "); got != "" && got != "b" {
				t.Fatalf("restore wrote outside its destination: %s", got)
			}
			if _, err := exec.Command("virsh", "-c", testenv.LibvirtURI, "dominfo", running1).CombinedOutput(); err == nil {
				t.Fatalf("a failed restore left domain %s defined", running1)
			}
		})
	}
	// verify catches the damage too.
	dir := filepath.Join(work, "bad", "verify")
	copyTree(t, good, dir)
	f, _ := os.OpenFile(filepath.Join(dir, running1+".vdb.qcow2"), os.O_WRONLY, 0)
	f.WriteAt([]byte{0xff}, 300<<10)
	f.Close()
	r := runOK(t, exitFailed, "verify", "--source-path", dir)
	if !strings.Contains(r.stdout, "checksum mismatch") {
		t.Fatalf("verify output: %s", r.stdout)
	}
}

func readMeta(t *testing.T, dir string) *virt.Metadata {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, virt.MetadataFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := virt.ReadMetadata(f)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func writeMeta(t *testing.T, dir string, m *virt.Metadata) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, virt.MetadataFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := m.WriteTo(f); err != nil {
		t.Fatal(err)
	}
}

func editMetadata(t *testing.T, dir, old, new string) {
	t.Helper()
	p := filepath.Join(dir, virt.MetadataFile)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("metadata has no %s:\n%s", old, b)
	}
	os.WriteFile(p, []byte(strings.Replace(string(b), old, new, 1)), 0o644)
}

// checkVerifyData fails unless verify reported, for every disk (all the
// test disks hold data), the data it found: a verified disk listed as
// "0 B data" reads as an empty backup.
func checkVerifyData(t *testing.T, r result) {
	t.Helper()
	for _, d := range r.summary.Domains {
		for _, k := range d.Disks {
			if k.DataBytes <= 0 || k.DataBytes > k.Size {
				t.Errorf("verify reports %d data bytes for %s %s of %d bytes", k.DataBytes, d.Name, k.Target, k.Size)
			}
		}
	}
}
