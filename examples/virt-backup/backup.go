package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/blockimage/blockimage/internal/iox"
	"github.com/blockimage/blockimage/virt"
)

type backupOptions struct {
	dest         string
	uri          string
	names        []string
	codec        codec
	leaveStopped bool
	prog         *progress
}

func runBackup(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("backup",
		"virt-backup backup --destination-path PATH [--hypervisor-uri URI] [--domain-names NAMES] [--compression none|lzma]",
		`Back up libvirt domains into PATH (created if missing; it must not hold a
backup already). A running domain's memory is saved to <name>.sav, which
stops it; its disks are copied, then it is restored from that memory and
runs on (the summary reports the downtime); checksums and compression run
after it resumes. With --leave-stopped it stays off (resume it later with
'virsh restore PATH/<name>.sav'). A shut-off domain's disks are
copied as they are. NAMES is a comma-separated list of domain names;
without it every domain of the hypervisor is backed up.
`, stdout, stderr)
	dest := fs.String("destination-path", "", "directory to write the backup to (required)")
	uri := fs.String("hypervisor-uri", virt.DefaultURI, "libvirt URI of the hypervisor")
	names := fs.String("domain-names", "", "comma-separated domain names (default: all domains)")
	compression := fs.String("compression", virt.CompressionNone, "disk image compression: none or lzma (.xz, readable by xz -d)")
	level := fs.Int("compression-level", 1, "xz preset 0..9 for --compression lzma")
	leave := fs.Bool("leave-stopped", false, "do not resume running domains after the backup (they stay shut off)")
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	if done, code := parse(fs, args, stdout); done {
		return code
	}
	if *dest == "" {
		return usageError(fs, "--destination-path is required")
	}
	nameList, err := splitNames(*names)
	if err != nil {
		return usageError(fs, "%v", err)
	}
	if *level < 0 || *level > 9 {
		return usageError(fs, "--compression-level %d is not in 0..9", *level)
	}
	prog := newProgress(stderr)
	c, err := codecFor(*compression, *level, func(f string, a ...any) { fmt.Fprintf(stderr, "virt-backup: warning: "+f+"\n", a...) })
	if err != nil {
		return usageError(fs, "%v", err)
	}
	o := backupOptions{dest: *dest, uri: *uri, names: nameList, codec: c, leaveStopped: *leave, prog: prog}
	s := &summary{Command: "backup", Destination: *dest}
	fatal := backup(ctx, o, s)
	return s.finish(stdout, *asJSON, fatal)
}

// backup backs up every selected domain into o.dest. It returns true when
// nothing could be done (s.Error says why); per-domain failures are in s.
func backup(ctx context.Context, o backupOptions, s *summary) (fatal bool) {
	cleanup, err := mkdirOwned(o.dest)
	if err != nil {
		s.Error = err.Error()
		return true
	}
	defer cleanup()
	metaPath := filepath.Join(o.dest, virt.MetadataFile)
	if _, err := os.Lstat(metaPath); err == nil {
		s.Error = fmt.Sprintf("%s already holds a backup (%s); choose an empty directory", o.dest, virt.MetadataFile)
		return true
	}
	conn, err := virt.Connect(ctx, o.uri)
	if err != nil {
		s.Error = err.Error()
		return true
	}
	defer conn.Close()
	doms, err := conn.Domains(ctx, o.names...)
	var nf *virt.NotFoundError
	if errors.As(err, &nf) {
		missing := map[string]bool{}
		for _, n := range nf.Names {
			missing[n] = true
		}
		var rest []string
		for _, n := range o.names {
			if !missing[n] {
				rest = append(rest, n)
			}
		}
		doms, err = nil, nil
		if len(rest) > 0 {
			doms, err = conn.Domains(ctx, rest...)
		}
		for _, n := range nf.Names {
			s.Domains = append(s.Domains, domainResult{Name: n, Error: "no such domain"})
		}
	}
	if err != nil {
		s.Error = err.Error()
		return true
	}
	meta := &virt.Metadata{Created: time.Now().UTC().Truncate(time.Second), Hypervisor: conn.URI()}
	for _, d := range doms {
		res, dm := backupDomain(ctx, conn, d, o)
		_ = d.Free()
		s.Domains = append(s.Domains, res)
		if res.OK {
			meta.Domains = append(meta.Domains, *dm)
		}
	}
	if len(meta.Domains) == 0 {
		return false
	}
	if err := writeMetadata(meta, metaPath); err != nil {
		s.Error = err.Error()
		for i := range s.Domains {
			s.Domains[i].OK = false
		}
	}
	return false
}

// writeMetadata writes m to path, which must not exist, durably.
func writeMetadata(m *virt.Metadata, path string) error {
	tmp := path + ".partial"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if _, err := m.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	// link, not rename: never replace a metadata file that appeared.
	if err := os.Link(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// plannedDisk is a disk to copy, checked before the guest is stopped.
type plannedDisk struct {
	disk   virt.Disk
	stored string // stored file name, without the codec extension
	attrs  virt.FileAttrs
	chain  []virt.ImageLayer
}

func backupDomain(ctx context.Context, conn *virt.Conn, d *virt.Domain, o backupOptions) (res domainResult, dm *virt.DomainMetadata) {
	name := d.Name()
	res.Name = name
	var created []string
	// keep is a saved memory image that is the only copy of a guest's
	// memory (the guest was not resumed from it): never removed.
	var keep string
	defer func() {
		if !res.OK {
			for _, p := range created {
				if p != keep {
					os.Remove(p)
				}
			}
			if keep != "" {
				res.Error += fmt.Sprintf("; the guest is stopped and its memory is in %s: run 'virsh restore %s' to resume it", keep, keep)
			}
		}
	}()
	fail := func(err error) (domainResult, *virt.DomainMetadata) {
		res.Error = err.Error()
		return res, nil
	}
	if err := virt.CheckName(name); err != nil {
		return fail(fmt.Errorf("domain name is not usable as a file name: %w", err))
	}
	uuid, err := d.UUID()
	if err != nil {
		return fail(err)
	}
	state, err := d.State(ctx)
	if err != nil {
		return fail(err)
	}
	res.Running = state.Active()
	inactive, err := d.XML(ctx, true)
	if err != nil {
		return fail(err)
	}
	plan, err := planDisks(ctx, d, inactive, state.Active())
	if err != nil {
		return fail(err)
	}
	dm = &virt.DomainMetadata{Name: name, UUID: uuid, Running: state.Active(), State: string(state)}

	// The domain XML first: refuse a clobbering destination before the
	// guest is touched.
	xmlName := name + ".xml"
	xmlPath := filepath.Join(o.dest, xmlName)
	if err := writeNew(xmlPath, []byte(inactive)); err != nil {
		return fail(err)
	}
	created = append(created, xmlPath)
	sum := sha256.Sum256([]byte(inactive))
	dm.XML = virt.StoredFile{File: xmlName, Size: int64(len(inactive)), SHA256: hex.EncodeToString(sum[:])}
	for i := range plan {
		p := filepath.Join(o.dest, plan[i].stored+o.ext())
		if _, err := os.Lstat(p); err == nil {
			return fail(fmt.Errorf("%s exists; not overwriting it", p))
		}
	}

	savName := name + ".sav"
	savPath := filepath.Join(o.dest, savName)
	if state.Active() {
		if _, err := os.Lstat(savPath); err == nil {
			return fail(fmt.Errorf("%s exists; not overwriting it", savPath))
		}
		abs, err := filepath.Abs(savPath)
		if err != nil {
			return fail(err)
		}
		o.prog.note("%s: saving memory (the guest stops until its disks are copied)", name)
		t0 := time.Now()
		if err := d.Save(ctx, abs); err != nil {
			os.Remove(savPath)
			return fail(err)
		}
		res.SaveSeconds = time.Since(t0).Seconds()
		created = append(created, savPath)
		// Whatever happens to the copies, the guest comes back, also with
		// --leave-stopped when the backup fails before it is complete.
		resumed := false
		defer func() {
			if !resumed {
				if err := conn.Restore(context.WithoutCancel(ctx), abs, "", false); err != nil {
					res.OK = false
					res.Error = strings.TrimPrefix(res.Error+"; ", "; ") + fmt.Sprintf("the guest could not be resumed: %v", err)
					keep = savPath
				}
			}
		}()
		// While the guest is stopped, only a plain sparse copy (or the
		// flattening of a chain): no checksum, no compression, no fsync.
		// Those run on the copy once the guest runs again, so that the
		// downtime is the save, this copy and the restore.
		quick := make([]string, len(plan))
		for i, p := range plan {
			q, err := quickCopy(ctx, o, name, p)
			if q != "" {
				created = append(created, q)
			}
			if err != nil {
				return fail(err)
			}
			quick[i] = q
		}
		if o.leaveStopped {
			keep = savPath
			// Say how to bring it back: a transient guest is not even
			// listed any more.
			res.Warnings = append(res.Warnings, fmt.Sprintf("left stopped (--leave-stopped); resume it with 'virsh restore %s'", abs))
		} else if err := conn.Restore(ctx, abs, "", false); err != nil {
			keep = savPath
			res.Warnings = append(res.Warnings, fmt.Sprintf("the guest could not be resumed: %v; run 'virsh restore %s'", err, abs))
		} else {
			res.DowntimeSeconds = time.Since(t0).Seconds()
		}
		resumed = true
		for i, p := range plan {
			dr, dk, err := copyDisk(ctx, o, name, p, quick[i])
			if err != nil {
				return fail(err)
			}
			created = append(created, filepath.Join(o.dest, dk.Stored.File))
			res.Disks = append(res.Disks, dr)
			dm.Disks = append(dm.Disks, dk)
		}
		h, size, err := virt.FileSHA256(ctx, savPath)
		if err != nil {
			return fail(err)
		}
		dm.Memory = &virt.StoredFile{File: savName, Size: size, SHA256: h}
	} else {
		// A managed save is memory libvirt keeps outside the disks: the
		// disks match it, not a clean shutdown, and it is not backed up.
		if ms, err := d.HasManagedSave(); err == nil && ms {
			res.Warnings = append(res.Warnings, "the domain has a managed save image (its memory, from 'virsh managedsave'), which is not backed up: the restored guest boots from disks of a system that did not shut down; 'virsh start' it before the backup so that its memory is saved with it")
		}
		for _, p := range plan {
			dr, dk, err := copyDisk(ctx, o, name, p, "")
			if err != nil {
				return fail(err)
			}
			created = append(created, filepath.Join(o.dest, dk.Stored.File))
			res.Disks = append(res.Disks, dr)
			dm.Disks = append(dm.Disks, dk)
		}
	}
	if st, err := d.State(ctx); err == nil {
		res.State = string(st)
	}
	res.OK = true
	return res, dm
}

func (o backupOptions) ext() string {
	if o.codec == nil {
		return ""
	}
	return o.codec.ext()
}

// planDisks lists the disks to copy (the live XML's, for a running guest,
// plus any only in the persistent definition) and checks that each can be
// copied, so that an unsupported disk fails before the guest is stopped.
func planDisks(ctx context.Context, d *virt.Domain, inactive string, active bool) ([]plannedDisk, error) {
	docs := []string{inactive}
	if active {
		live, err := d.XML(ctx, false)
		if err != nil {
			return nil, err
		}
		docs = []string{live, inactive}
	}
	var plan []plannedDisk
	seen := map[string]bool{}
	used := map[string]bool{}
	for _, doc := range docs {
		dx, err := virt.ParseDomain(strings.NewReader(doc))
		if err != nil {
			return nil, err
		}
		for _, k := range dx.Disks {
			if err := k.CheckSupported(); err != nil {
				return nil, err
			}
			if !k.Copyable() || seen[k.Source] {
				continue
			}
			seen[k.Source] = true
			if err := virt.CheckName(k.Target); err != nil {
				return nil, fmt.Errorf("disk target: %w", err)
			}
			if k.Format == "" {
				k.Format = "raw"
			}
			stored := fmt.Sprintf("%s.%s.%s", dx.Name, k.Target, k.Format)
			for i := 2; used[stored]; i++ {
				stored = fmt.Sprintf("%s.%s-%d.%s", dx.Name, k.Target, i, k.Format)
			}
			used[stored] = true
			attrs, err := virt.ReadAttrs(k.Source)
			if err != nil {
				return nil, fmt.Errorf("disk %s: %w", k.Target, err)
			}
			p := plannedDisk{disk: k, stored: stored, attrs: attrs}
			if k.Format == "qcow2" {
				chain, err := virt.ImageChain(ctx, k.Source, k.Format)
				if err != nil {
					return nil, fmt.Errorf("disk %s: %w", k.Target, err)
				}
				if len(chain) > 1 {
					p.chain = chain[1:]
				}
			}
			plan = append(plan, p)
		}
	}
	return plan, nil
}

// quickCopy copies a disk, as fast as it can, to a hidden file in the
// backup folder (flattening a backing chain) and returns its path.
func quickCopy(ctx context.Context, o backupOptions, domain string, p plannedDisk) (string, error) {
	tmp := filepath.Join(o.dest, "."+p.stored+".copy")
	o.prog.begin(fmt.Sprintf("%s %s (guest stopped)", domain, p.disk.Target))
	defer o.prog.end()
	if len(p.chain) > 0 {
		if err := virt.Flatten(ctx, p.disk.Source, p.disk.Format, tmp); err != nil {
			return tmp, err
		}
		return tmp, nil
	}
	in, err := os.Open(p.disk.Source)
	if err != nil {
		return "", err
	}
	defer in.Close()
	size, err := in.Seek(0, io.SeekEnd)
	if err != nil {
		return "", fmt.Errorf("size of %s: %w", p.disk.Source, err)
	}
	out, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	defer out.Close()
	_, err = virt.Copier{Progress: o.prog.update, NoHash: true, NoSync: true}.CopySparse(ctx, out, in, size)
	return tmp, err
}

// copyDisk copies one disk into the backup folder, with its checksum
// (and compressed when asked). quick, when set, is quickCopy's copy of
// the disk: it is read instead of the disk and removed; uncompressed, it
// becomes the stored file itself.
func copyDisk(ctx context.Context, o backupOptions, domain string, p plannedDisk, quick string) (diskResult, virt.DiskMetadata, error) {
	src := p.disk.Source
	dk := virt.DiskMetadata{
		Domain: domain, Type: p.disk.Type, Device: p.disk.Device, Target: p.disk.Target, Format: p.disk.Format,
		Source: src, UID: p.attrs.UID, GID: p.attrs.GID, Mode: p.attrs.Mode, SELinux: p.attrs.SELinux,
		Compression: virt.CompressionNone,
	}
	for _, l := range p.chain {
		dk.Flattened = true
		dk.BackingChain = append(dk.BackingChain, l.Filename)
	}
	if quick != "" {
		defer os.Remove(quick)
		src = quick
		if o.codec == nil {
			return adoptCopy(ctx, o, p, dk, quick)
		}
	} else if len(p.chain) > 0 {
		// A backing chain is flattened into one standalone image so that
		// the backup restores without the base images.
		flat := filepath.Join(o.dest, "."+p.stored+".flatten")
		o.prog.note("%s: flattening the backing chain of %s", domain, p.disk.Target)
		if err := virt.Flatten(ctx, src, p.disk.Format, flat); err != nil {
			os.Remove(flat)
			return diskResult{}, dk, err
		}
		defer os.Remove(flat)
		src = flat
	}
	in, err := os.Open(src)
	if err != nil {
		return diskResult{}, dk, err
	}
	defer in.Close()
	size, err := in.Seek(0, io.SeekEnd) // works for block devices too
	if err != nil {
		return diskResult{}, dk, fmt.Errorf("size of %s: %w", src, err)
	}
	dk.Size = size
	storedName := p.stored + o.ext()
	storedPath := filepath.Join(o.dest, storedName)
	out, err := os.OpenFile(storedPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return diskResult{}, dk, err
	}
	ok := false
	defer func() {
		out.Close()
		if !ok {
			os.Remove(storedPath)
		}
	}()
	o.prog.begin(fmt.Sprintf("%s %s", domain, p.disk.Target))
	defer o.prog.end()
	cp := virt.Copier{Progress: o.prog.update}
	var dg virt.Digest
	if o.codec == nil {
		dg, err = cp.CopySparse(ctx, out, in, size)
		if err != nil {
			return diskResult{}, dk, err
		}
		dk.Stored = virt.StoredFile{File: storedName, Size: size, SHA256: dg.SHA256}
	} else {
		h := sha256.New()
		cw := &iox.CountingWriter{W: io.MultiWriter(out, h)}
		zw, err := o.codec.newWriter(ctx, cw)
		if err != nil {
			return diskResult{}, dk, err
		}
		dg, err = cp.WriteLogical(ctx, zw, in, size)
		if cerr := zw.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("compressing: %w", cerr)
		}
		if err != nil {
			return diskResult{}, dk, err
		}
		if err := out.Sync(); err != nil {
			return diskResult{}, dk, err
		}
		dk.Compression = o.codec.name()
		dk.Stored = virt.StoredFile{File: storedName, Size: cw.N, SHA256: hex.EncodeToString(h.Sum(nil))}
	}
	dk.SHA256 = dg.SHA256
	ok = true
	return diskResult{
		Target: p.disk.Target, Source: p.disk.Source, File: storedName, Size: size, DataBytes: dg.DataBytes,
		StoredBytes: dk.Stored.Size, SHA256: dg.SHA256, Flattened: dk.Flattened,
	}, dk, nil
}

// adoptCopy makes quickCopy's uncompressed copy the stored file: it is
// linked under its final name (never replacing a file), checksummed and
// synced.
func adoptCopy(ctx context.Context, o backupOptions, p plannedDisk, dk virt.DiskMetadata, quick string) (diskResult, virt.DiskMetadata, error) {
	storedName := p.stored
	storedPath := filepath.Join(o.dest, storedName)
	if err := os.Link(quick, storedPath); err != nil {
		return diskResult{}, dk, err
	}
	ok := false
	defer func() {
		if !ok {
			os.Remove(storedPath)
		}
	}()
	f, err := os.OpenFile(storedPath, os.O_RDWR, 0)
	if err != nil {
		return diskResult{}, dk, err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return diskResult{}, dk, err
	}
	o.prog.begin(fmt.Sprintf("%s %s checksum", dk.Domain, dk.Target))
	dg, err := virt.Copier{Progress: o.prog.update}.Hash(ctx, f, size)
	o.prog.end()
	if err != nil {
		return diskResult{}, dk, err
	}
	if err := f.Sync(); err != nil {
		return diskResult{}, dk, err
	}
	dk.Size, dk.SHA256 = size, dg.SHA256
	dk.Stored = virt.StoredFile{File: storedName, Size: size, SHA256: dg.SHA256}
	ok = true
	return diskResult{
		Target: p.disk.Target, Source: p.disk.Source, File: storedName, Size: size, DataBytes: dg.DataBytes,
		StoredBytes: size, SHA256: dg.SHA256, Flattened: dk.Flattened,
	}, dk, nil
}

// writeNew writes data to path, which must not exist.
func writeNew(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// mkdirOwned creates dir (and its parents) when missing, and returns a
// function that removes dir again if this call created it and it is still
// empty, so that a run that wrote nothing leaves no directory behind.
func mkdirOwned(dir string) (cleanup func(), err error) {
	_, serr := os.Lstat(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return func() {}, err
	}
	if !os.IsNotExist(serr) {
		return func() {}, nil
	}
	// os.Remove fails on a directory that is not empty: nothing is lost.
	return func() { _ = os.Remove(dir) }, nil
}
