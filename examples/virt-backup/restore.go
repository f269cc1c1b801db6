package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/blockimage/blockimage/internal/iox"
	"github.com/blockimage/blockimage/virt"
)

type restoreOptions struct {
	src, dest string
	uri       string
	names     []string
	autorun   bool
	prog      *progress
}

func runRestore(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("restore",
		"virt-backup restore --source-path SRC --destination-path PATH [--hypervisor-uri URI] [--allow-autorun] [--domain-names NAMES]",
		`Restore domains from the backup in SRC: verify every checksum, recreate
each disk image in PATH with its original size, owner, mode and SELinux
context, and define the domain with the new disk paths. A domain whose name
or UUID is still defined on the hypervisor is refused, not replaced. With
--allow-autorun a domain that was running at backup time is started from
its saved memory (PATH/<name>.sav); without it, 'virsh restore
PATH/<name>.sav' does so later. Domains that were shut off stay shut off.
Nothing that exists in PATH is overwritten.
`, stdout, stderr)
	src := fs.String("source-path", "", "backup directory to restore from (required)")
	dest := fs.String("destination-path", "", "directory to write the disk images to (required)")
	uri := fs.String("hypervisor-uri", virt.DefaultURI, "libvirt URI of the hypervisor")
	autorun := fs.Bool("allow-autorun", false, "start domains that were running from their saved memory")
	names := fs.String("domain-names", "", "comma-separated domain names (default: all domains of the backup)")
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	if done, code := parse(fs, args, stdout); done {
		return code
	}
	if *src == "" || *dest == "" {
		return usageError(fs, "--source-path and --destination-path are required")
	}
	nameList, err := splitNames(*names)
	if err != nil {
		return usageError(fs, "%v", err)
	}
	o := restoreOptions{src: *src, dest: *dest, uri: *uri, names: nameList, autorun: *autorun, prog: newProgress(stderr)}
	s := &summary{Command: "restore", Source: *src, Destination: *dest}
	fatal := restore(ctx, o, s)
	return s.finish(stdout, *asJSON, fatal)
}

// readBackup reads and validates SRC/backup.xml.
func readBackup(src string) (*virt.Metadata, error) {
	f, err := os.Open(filepath.Join(src, virt.MetadataFile))
	if err != nil {
		return nil, fmt.Errorf("no backup metadata: %w", err)
	}
	defer f.Close()
	return virt.ReadMetadata(f)
}

// selectDomains returns the metadata of the named domains (all without
// names), and a failed result for each name the backup does not hold.
func selectDomains(m *virt.Metadata, names []string) ([]*virt.DomainMetadata, []domainResult) {
	var out []*virt.DomainMetadata
	var missing []domainResult
	if len(names) == 0 {
		for i := range m.Domains {
			out = append(out, &m.Domains[i])
		}
		return out, nil
	}
	for _, n := range names {
		if d := m.Domain(n); d != nil {
			out = append(out, d)
		} else {
			missing = append(missing, domainResult{Name: n, Error: "the backup holds no such domain"})
		}
	}
	return out, missing
}

func restore(ctx context.Context, o restoreOptions, s *summary) (fatal bool) {
	m, err := readBackup(o.src)
	if err != nil {
		s.Error = err.Error()
		return true
	}
	doms, missing := selectDomains(m, o.names)
	s.Domains = append(s.Domains, missing...)
	cleanup, err := mkdirOwned(o.dest)
	if err != nil {
		s.Error = err.Error()
		return true
	}
	defer cleanup()
	dest, err := filepath.Abs(o.dest)
	if err != nil {
		s.Error = err.Error()
		return true
	}
	o.dest = dest
	conn, err := virt.Connect(ctx, o.uri)
	if err != nil {
		s.Error = err.Error()
		return true
	}
	defer conn.Close()
	for _, d := range doms {
		s.Domains = append(s.Domains, restoreDomain(ctx, conn, d, o))
	}
	return false
}

func restoreDomain(ctx context.Context, conn *virt.Conn, dm *virt.DomainMetadata, o restoreOptions) (res domainResult) {
	res.Name, res.Running = dm.Name, dm.Running
	var created []string
	var defined *virt.Domain
	defer func() {
		if res.OK {
			return
		}
		// Undo what this domain's restore made, and only that.
		if defined != nil {
			_ = defined.Undefine(context.WithoutCancel(ctx))
		}
		for _, p := range created {
			os.Remove(p)
		}
		// Their files are gone: do not list them as restored.
		res.Disks = nil
	}()
	fail := func(err error) domainResult {
		res.Error = err.Error()
		return res
	}
	exists, err := conn.Exists(ctx, dm.Name, dm.UUID)
	if err != nil {
		return fail(err)
	}
	if exists {
		return fail(fmt.Errorf("%w: a domain named %q or with UUID %s is defined on %s; undefine it or restore elsewhere (nothing was written)", virt.ErrDomainExists, dm.Name, dm.UUID, conn.URI()))
	}
	domXML, err := readStoredSmall(ctx, o.src, dm.XML)
	if err != nil {
		return fail(err)
	}
	dx, err := virt.ParseDomain(strings.NewReader(domXML))
	if err != nil {
		return fail(err)
	}
	if dx.Name != dm.Name || (dm.UUID != "" && !strings.EqualFold(dx.UUID, dm.UUID)) {
		return fail(fmt.Errorf("%s describes domain %q (%s), the metadata says %q (%s)", dm.XML.File, dx.Name, dx.UUID, dm.Name, dm.UUID))
	}
	// A backup never holds network or pool disks (backup refuses them), so
	// an XML with one was not written by backup.
	for _, k := range dx.Disks {
		if err := k.CheckSupported(); err != nil {
			return fail(fmt.Errorf("%s: %w", dm.XML.File, err))
		}
	}

	// Memory first: a .sav that does not belong to this domain fails the
	// restore before disks are written.
	var savPath, savXML string
	if dm.Memory != nil {
		savPath, err = virt.JoinName(o.dest, dm.Memory.File)
		if err != nil {
			return fail(err)
		}
		srcSav, err := virt.JoinName(o.src, dm.Memory.File)
		if err != nil {
			return fail(err)
		}
		if err := copyVerified(ctx, srcSav, savPath, *dm.Memory); err != nil {
			return fail(err)
		}
		created = append(created, savPath)
		savXML, err = conn.SaveImageXML(ctx, savPath)
		if err != nil {
			return fail(fmt.Errorf("%s is not a usable memory image: %w", dm.Memory.File, err))
		}
		sx, err := virt.ParseDomain(strings.NewReader(savXML))
		if err != nil {
			return fail(err)
		}
		if sx.Name != dm.Name || !strings.EqualFold(sx.UUID, dx.UUID) {
			return fail(fmt.Errorf("%s holds the memory of domain %q (%s), not of %q (%s)", dm.Memory.File, sx.Name, sx.UUID, dm.Name, dx.UUID))
		}
	}

	newPaths := map[string]string{}
	flatten := map[string]bool{}
	for _, k := range dm.Disks {
		dr, path, err := restoreDisk(ctx, o, k)
		if path != "" {
			created = append(created, path)
		}
		if err != nil {
			return fail(fmt.Errorf("disk %s: %w", k.Target, err))
		}
		if dr.warning != "" {
			res.Warnings = append(res.Warnings, dr.warning)
		}
		res.Disks = append(res.Disks, dr.diskResult)
		newPaths[k.Source] = path
		flatten[k.Source] = k.Flattened
	}
	newXML, err := virt.RewriteDiskSources(domXML, newPaths, flatten)
	if err != nil {
		return fail(err)
	}
	if savXML != "" {
		newSav, err := virt.RewriteDiskSources(savXML, newPaths, flatten)
		if err != nil {
			return fail(err)
		}
		if err := conn.DefineSaveImageXML(ctx, savPath, newSav); err != nil {
			return fail(err)
		}
	}
	defined, err = conn.Define(ctx, newXML)
	if err != nil {
		return fail(err)
	}
	if o.autorun && savPath != "" {
		o.prog.note("%s: starting from saved memory", dm.Name)
		if err := conn.Restore(ctx, savPath, "", false); err != nil {
			return fail(err)
		}
	} else if savPath != "" {
		res.Warnings = append(res.Warnings, fmt.Sprintf("was running at backup time: resume it from its memory with 'virsh restore %s' ('virsh start' boots it afresh)", savPath))
	}
	if st, err := defined.State(ctx); err == nil {
		res.State = string(st)
	}
	_ = defined.Free()
	defined = nil
	res.OK = true
	return res
}

type restoredDisk struct {
	diskResult
	warning string
}

// restoreDisk recreates one disk image in the destination, verified, with
// its original size, owner, mode and SELinux context. It returns the
// image's path once it created it (so that a failure can remove it).
func restoreDisk(ctx context.Context, o restoreOptions, k virt.DiskMetadata) (restoredDisk, string, error) {
	name := strings.TrimSuffix(k.Stored.File, ".xz")
	if k.Compression == virt.CompressionLZMA && name == k.Stored.File {
		return restoredDisk{}, "", fmt.Errorf("compressed file %q has no .xz extension", k.Stored.File)
	}
	dst, err := virt.JoinName(o.dest, name)
	if err != nil {
		return restoredDisk{}, "", err
	}
	srcPath, err := virt.JoinName(o.src, k.Stored.File)
	if err != nil {
		return restoredDisk{}, "", err
	}
	in, err := openNoFollow(srcPath)
	if err != nil {
		return restoredDisk{}, "", err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return restoredDisk{}, "", err
	}
	defer out.Close()
	o.prog.begin(fmt.Sprintf("%s %s", k.Domain, k.Target))
	defer o.prog.end()
	cp := virt.Copier{Progress: o.prog.update}
	var dg virt.Digest
	switch k.Compression {
	case virt.CompressionNone:
		fi, err := in.Stat()
		if err != nil {
			return restoredDisk{}, dst, err
		}
		if fi.Size() != k.Size {
			return restoredDisk{}, dst, fmt.Errorf("%w: %s is %d bytes, the metadata says %d", virt.ErrSize, k.Stored.File, fi.Size(), k.Size)
		}
		dg, err = cp.CopySparse(ctx, out, in, k.Size)
		if err != nil {
			return restoredDisk{}, dst, err
		}
	case virt.CompressionLZMA:
		if err := checkStored(ctx, srcPath, k.Stored); err != nil {
			return restoredDisk{}, dst, err
		}
		c, _ := codecFor(virt.CompressionLZMA, 0, nil)
		zr, err := c.newReader(ctx, in)
		if err != nil {
			return restoredDisk{}, dst, fmt.Errorf("%s: %w", k.Stored.File, err)
		}
		dg, err = cp.ReadLogical(ctx, out, zr, k.Size)
		if err != nil {
			return restoredDisk{}, dst, fmt.Errorf("%s: %w", k.Stored.File, err)
		}
	}
	if dg.SHA256 != k.SHA256 {
		return restoredDisk{}, dst, fmt.Errorf("%w: %s content has SHA-256 %s, the metadata says %s", virt.ErrChecksum, k.Stored.File, dg.SHA256, k.SHA256)
	}
	var r restoredDisk
	selErr, err := virt.ApplyAttrs(out, virt.FileAttrs{UID: k.UID, GID: k.GID, Mode: k.Mode, SELinux: k.SELinux})
	if err != nil {
		return restoredDisk{}, dst, err
	}
	if selErr != nil {
		r.warning = fmt.Sprintf("disk %s: SELinux context %q not set: %v", k.Target, k.SELinux, selErr)
	}
	if err := out.Sync(); err != nil {
		return restoredDisk{}, dst, err
	}
	r.diskResult = diskResult{Target: k.Target, Source: k.Source, File: dst, Size: k.Size, DataBytes: dg.DataBytes, SHA256: dg.SHA256, Flattened: k.Flattened}
	return r, dst, nil
}

// checkStored verifies a stored file's length and SHA-256.
func checkStored(ctx context.Context, path string, f virt.StoredFile) error {
	h, n, err := virt.FileSHA256(ctx, path)
	if err != nil {
		return err
	}
	if n != f.Size {
		return fmt.Errorf("%w: %s is %d bytes, the metadata says %d (truncated or replaced?)", virt.ErrSize, f.File, n, f.Size)
	}
	if h != f.SHA256 {
		return fmt.Errorf("%w: %s has SHA-256 %s, the metadata says %s", virt.ErrChecksum, f.File, h, f.SHA256)
	}
	return nil
}

// readStoredSmall reads a small stored file (the domain XML), verified.
func readStoredSmall(ctx context.Context, dir string, f virt.StoredFile) (string, error) {
	p, err := virt.JoinName(dir, f.File)
	if err != nil {
		return "", err
	}
	if f.Size > 16<<20 {
		return "", fmt.Errorf("%w: %s is said to be %d bytes", virt.ErrCorruptMetadata, f.File, f.Size)
	}
	in, err := openNoFollow(p)
	if err != nil {
		return "", err
	}
	defer in.Close()
	data, err := io.ReadAll(io.LimitReader(in, f.Size+1))
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	if int64(len(data)) != f.Size || hex.EncodeToString(sum[:]) != f.SHA256 {
		return "", fmt.Errorf("%w: %s does not match the metadata", virt.ErrChecksum, f.File)
	}
	return string(data), nil
}

// copyVerified copies src to dst (new), checking length and SHA-256 on the
// way; a mismatch removes dst.
func copyVerified(ctx context.Context, src, dst string, f virt.StoredFile) (err error) {
	in, err := openNoFollow(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), io.LimitReader(iox.ContextReader{Ctx: ctx, R: in}, f.Size+1))
	if err != nil {
		return err
	}
	if n != f.Size {
		return fmt.Errorf("%w: %s is %d bytes, the metadata says %d", virt.ErrSize, f.File, n, f.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != f.SHA256 {
		return fmt.Errorf("%w: %s has SHA-256 %s, the metadata says %s", virt.ErrChecksum, f.File, got, f.SHA256)
	}
	return out.Sync()
}

func openNoFollow(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
}

// hashStream hashes r, reading at most limit+1 bytes, and returns the hex
// SHA-256, the length read, and the bytes in 4 KiB blocks that are not all
// zero (those a restore writes as data).
func hashStream(ctx context.Context, r io.Reader, limit int64, progress func(done, total int64)) (string, int64, int64, error) {
	const grain = 4096
	h := sha256.New()
	buf := make([]byte, 1<<20)
	zero := make([]byte, grain)
	var n, data int64
	lr := io.LimitReader(iox.ContextReader{Ctx: ctx, R: r}, limit+1)
	for {
		// Whole buffers, so that grains stay aligned to the image.
		k, err := io.ReadFull(lr, buf)
		h.Write(buf[:k])
		for i := 0; i < k; i += grain {
			g := buf[i:min(i+grain, k)]
			if !bytes.Equal(g, zero[:len(g)]) {
				data += int64(len(g))
			}
		}
		n += int64(k)
		progress(min(n, limit), limit)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return "", n, data, err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), n, data, nil
}
