package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
	"github.com/blockimage/blockimage/virt"
)

// compressedBackup backs up the running guest g alone with --compression
// lzma (--domain-names filters out the others) and checks the .xz files
// with stock xz. It returns the backup folder.
func compressedBackup(t *testing.T, work string, g *testenv.Guest, others ...string) string {
	t.Helper()
	backupDir := filepath.Join(work, "backup-xz")
	r := runOK(t, exitOK, "backup", "--destination-path", backupDir, "--domain-names", g.Name, "--compression", "lzma", "--json")
	if len(r.summary.Domains) != 1 {
		t.Fatalf("summary has %d domains, want only %s", len(r.summary.Domains), g.Name)
	}
	d := r.domain(t, g.Name)
	if !d.OK || !d.Running || d.DowntimeSeconds <= 0 {
		t.Fatalf("summary %+v", d)
	}
	t.Logf("compressed backup downtime %.2fs (save %.2fs)", d.DowntimeSeconds, d.SaveSeconds)
	if s := state(t, g.Name); s != "running" {
		t.Fatalf("guest %q after backup", s)
	}
	files := strings.Join(listDir(t, backupDir), " ")
	for _, o := range others {
		if strings.Contains(files, o) {
			t.Fatalf("--domain-names %s backed up %s too: %s", g.Name, o, files)
		}
	}
	for i, name := range []string{".vda.raw", ".vdb.qcow2"} {
		xzFile := filepath.Join(backupDir, g.Name+name+".xz")
		plain := filepath.Join(work, "plain"+name)
		out, err := os.Create(plain)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("xz", "-dc", xzFile)
		cmd.Stdout = out
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("stock xz -d %s: %v %s", xzFile, err, stderr.String())
		}
		out.Close()
		format := strings.TrimPrefix(filepath.Ext(name), ".")
		qemuImgCompare(t, format, g.Disks[i], plain)
		st, _ := os.Stat(xzFile)
		t.Logf("%s: %d bytes compressed for %d", name, st.Size(), d.Disks[i].Size)
	}
	if r.stderr != "" {
		t.Errorf("backup not on a terminal printed on stderr: %q", r.stderr)
	}
	vr := runOK(t, exitOK, "verify", "--source-path", backupDir, "--json")
	checkVerifyData(t, vr)
	if vr.stderr != "" {
		t.Errorf("verify not on a terminal printed on stderr: %q", vr.stderr)
	}
	// On a terminal (script(1) gives it one), verify shows progress.
	if _, err := exec.LookPath("script"); err == nil {
		out, err := exec.Command("script", "-qec", binary(t)+" verify --source-path "+backupDir, "/dev/null").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "100.0% of 16.0 MiB") {
			t.Errorf("verify on a terminal: %v, no progress in %q", err, out)
		}
	}
	return backupDir
}

// truncatedXZ restores copies of the compressed backup whose .xz is cut in
// half: once with the metadata unchanged (the size check catches it), once
// with the metadata made to agree (only the .xz stream can tell).
func truncatedXZ(t *testing.T, work, backupDir, name string) {
	raw := name + ".vda.raw.xz"
	for _, agree := range []bool{false, true} {
		dir := filepath.Join(work, "truncated-"+strconv.FormatBool(agree))
		copyTree(t, backupDir, dir)
		p := filepath.Join(dir, raw)
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, st.Size()/2); err != nil {
			t.Fatal(err)
		}
		want := "size mismatch"
		if agree {
			m := readMeta(t, dir)
			s, n, err := virt.FileSHA256(t.Context(), p)
			if err != nil {
				t.Fatal(err)
			}
			disk := &m.Domain(name).Disks[0]
			disk.Stored.Size, disk.Stored.SHA256 = n, s
			writeMeta(t, dir, m)
			want = "disk vda: " + raw
		}
		outer := testenv.TempDir(t)
		dest := filepath.Join(outer, "dest")
		r := runOK(t, exitFailed, "restore", "--source-path", dir, "--destination-path", dest)
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("truncated .xz (metadata agrees: %v): output lacks %q:\n%s", agree, want, r.stdout)
		}
		if left := listDir(t, dest); len(left) != 0 {
			t.Fatalf("failed restore left %v", left)
		}
		// dest itself is gone: the failed restore created it and removed
		// it again, empty.
		if got := strings.Join(listDir(t, outer), " "); got != "" {
			t.Fatalf("restore wrote outside its destination: %s", got)
		}
		t.Logf("truncated .xz (metadata agrees: %v): %s", agree, strings.TrimSpace(r.stdout))
		vr := runOK(t, exitFailed, "verify", "--source-path", dir)
		if !strings.Contains(vr.stdout, "FAILED") {
			t.Fatalf("verify of truncated .xz: %s", vr.stdout)
		}
	}
}

// restoreCompressed restores the compressed backup of g (undefined by
// now) without --allow-autorun, then resumes it from the restored memory
// with virsh restore, as a user would.
func restoreCompressed(t *testing.T, work, backupDir string, g *testenv.Guest) {
	dest := filepath.Join(work, "restored-xz")
	r := runOK(t, exitOK, "restore", "--source-path", backupDir, "--destination-path", dest, "--json")
	if d := r.domain(t, g.Name); !strings.Contains(strings.Join(d.Warnings, "\n"), "virsh restore "+filepath.Join(dest, g.Name+".sav")) {
		t.Fatalf("restore without --allow-autorun does not say how to resume the guest: %+v", d)
	}
	if s := state(t, g.Name); s != "shut off" {
		t.Fatalf("restored without --allow-autorun: %q", s)
	}
	qemuImgCompare(t, "raw", g.Disks[0], filepath.Join(dest, g.Name+".vda.raw"))
	qemuImgCompare(t, "qcow2", g.Disks[1], filepath.Join(dest, g.Name+".vdb.qcow2"))
	// The saved memory in the destination names the restored disks.
	testenv.Virsh(t, "restore", filepath.Join(dest, g.Name+".sav"))
	if s := state(t, g.Name); s != "running" {
		t.Fatalf("virsh restore of the restored memory: %q", s)
	}
	if blk := testenv.Virsh(t, "domblklist", g.Name); !strings.Contains(blk, dest) {
		t.Fatalf("resumed guest uses other disks:\n%s", blk)
	}
}
