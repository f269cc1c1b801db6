package main

import (
	"context"
	"fmt"
	"io"

	"github.com/blockimage/blockimage/virt"
)

func runVerify(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("verify", "virt-backup verify --source-path SRC",
		`Check the backup in SRC without restoring it and without libvirt: the
metadata, the length and SHA-256 of every stored file, and the SHA-256 of
every disk's (decompressed) content.
`, stdout, stderr)
	src := fs.String("source-path", "", "backup directory to verify (required)")
	names := fs.String("domain-names", "", "comma-separated domain names (default: all domains of the backup)")
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	if done, code := parse(fs, args, stdout); done {
		return code
	}
	if *src == "" {
		return usageError(fs, "--source-path is required")
	}
	nameList, err := splitNames(*names)
	if err != nil {
		return usageError(fs, "%v", err)
	}
	s := &summary{Command: "verify", Source: *src}
	m, err := readBackup(*src)
	if err != nil {
		s.Error = err.Error()
		return s.finish(stdout, *asJSON, true)
	}
	doms, missing := selectDomains(m, nameList)
	s.Domains = append(s.Domains, missing...)
	prog := newProgress(stderr)
	for _, d := range doms {
		s.Domains = append(s.Domains, verifyDomain(ctx, *src, d, prog))
	}
	return s.finish(stdout, *asJSON, false)
}

func verifyDomain(ctx context.Context, src string, dm *virt.DomainMetadata, prog *progress) domainResult {
	res := domainResult{Name: dm.Name, Running: dm.Running}
	fail := func(err error) domainResult { res.Error = err.Error(); return res }
	if _, err := readStoredSmall(ctx, src, dm.XML); err != nil {
		return fail(err)
	}
	if dm.Memory != nil {
		p, err := virt.JoinName(src, dm.Memory.File)
		if err != nil {
			return fail(err)
		}
		if err := checkStored(ctx, p, *dm.Memory); err != nil {
			return fail(err)
		}
	}
	for _, k := range dm.Disks {
		p, err := virt.JoinName(src, k.Stored.File)
		if err != nil {
			return fail(err)
		}
		dr := diskResult{Target: k.Target, Source: k.Source, File: k.Stored.File, Size: k.Size, StoredBytes: k.Stored.Size, SHA256: k.SHA256}
		if k.Compression == virt.CompressionNone {
			// The stored file is the content: one sparse read checks it
			// (holes read as zeros) and counts its data.
			if k.Stored.SHA256 != k.SHA256 || k.Stored.Size != k.Size {
				return fail(fmt.Errorf("disk %s: %w: stored file and content checksums differ for an uncompressed image", k.Target, virt.ErrCorruptMetadata))
			}
			prog.begin(fmt.Sprintf("%s %s", dm.Name, k.Target))
			data, err := checkStoredSparse(ctx, p, k.Stored, prog.update)
			prog.end()
			if err != nil {
				return fail(fmt.Errorf("disk %s: %w", k.Target, err))
			}
			dr.DataBytes = data
		} else {
			if err := checkStored(ctx, p, k.Stored); err != nil {
				return fail(fmt.Errorf("disk %s: %w", k.Target, err))
			}
			in, err := openNoFollow(p)
			if err != nil {
				return fail(err)
			}
			c, _ := codecFor(k.Compression, 0, nil)
			zr, err := c.newReader(ctx, in)
			if err != nil {
				in.Close()
				return fail(fmt.Errorf("disk %s: %w", k.Target, err))
			}
			prog.begin(fmt.Sprintf("%s %s", dm.Name, k.Target))
			h, n, data, err := hashStream(ctx, zr, k.Size, prog.update)
			prog.end()
			in.Close()
			if err != nil {
				return fail(fmt.Errorf("disk %s: %w", k.Target, err))
			}
			if n != k.Size {
				return fail(fmt.Errorf("disk %s: %w: decompresses to %d bytes, the metadata says %d", k.Target, virt.ErrSize, n, k.Size))
			}
			if h != k.SHA256 {
				return fail(fmt.Errorf("disk %s: %w: content SHA-256 %s, the metadata says %s", k.Target, virt.ErrChecksum, h, k.SHA256))
			}
			dr.DataBytes = data
		}
		res.Disks = append(res.Disks, dr)
	}
	res.OK = true
	return res
}

// checkStoredSparse verifies an uncompressed stored image's length and
// SHA-256 without reading its holes, and returns the bytes in its data
// extents.
func checkStoredSparse(ctx context.Context, path string, f virt.StoredFile, progress func(done, total int64)) (int64, error) {
	in, err := openNoFollow(path)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return 0, err
	}
	if fi.Size() != f.Size {
		return 0, fmt.Errorf("%w: %s is %d bytes, the metadata says %d (truncated or replaced?)", virt.ErrSize, f.File, fi.Size(), f.Size)
	}
	dg, err := virt.Copier{Progress: progress}.Hash(ctx, in, f.Size)
	if err != nil {
		return 0, err
	}
	if dg.SHA256 != f.SHA256 {
		return 0, fmt.Errorf("%w: %s has SHA-256 %s, the metadata says %s", virt.ErrChecksum, f.File, dg.SHA256, f.SHA256)
	}
	return dg.DataBytes, nil
}
