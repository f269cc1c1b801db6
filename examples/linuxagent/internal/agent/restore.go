package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

// RestoreOptions shape a restore.
type RestoreOptions struct {
	// Force allows overwriting a non-empty destination file.
	Force bool
	// ChunkSize is the size of each read and write. Default 1 MiB.
	ChunkSize int
	// Progress, if set, is called after every chunk with the bytes done
	// and the total.
	Progress func(done, total int64)
}

// RestoreResult is what a restore did.
type RestoreResult struct {
	// Size is the image size; Written what was written to the
	// destination (a file skips the zero chunks and stays sparse).
	Size, Written int64
}

// Restore copies the image at from (an NBD URI or a local image file) to
// dest, a block device that is not mounted, or a file, which it creates
// sparse.
func (p *Platform) Restore(ctx context.Context, from, dest string, o RestoreOptions) (res RestoreResult, err error) {
	if o.ChunkSize <= 0 {
		o.ChunkSize = 1 << 20
	}
	src, err := p.openSource(ctx, from)
	if err != nil {
		return res, err
	}
	defer src.Close()
	res.Size = src.Size()

	w, sparse, err := p.openDestination(dest, res.Size, o.Force)
	if err != nil {
		return res, err
	}
	defer func() {
		if cerr := w.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("linuxagent: closing %s: %w", dest, cerr)
		}
	}()

	buf := make([]byte, o.ChunkSize)
	for off := int64(0); off < res.Size; {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		n := int(min(int64(len(buf)), res.Size-off))
		got, err := src.ReadAt(ctx, buf[:n], off)
		if err != nil && !(errors.Is(err, io.EOF) && got == n) {
			return res, fmt.Errorf("linuxagent: reading %s at %d: %w", from, off, err)
		}
		if !(sparse && allZero(buf[:n])) {
			if _, err := w.WriteAt(buf[:n], off); err != nil {
				return res, fmt.Errorf("linuxagent: writing %s at %d: %w", dest, off, err)
			}
			res.Written += int64(n)
		}
		off += int64(n)
		if o.Progress != nil {
			o.Progress(off, res.Size)
		}
	}
	if err := w.Sync(); err != nil {
		return res, fmt.Errorf("linuxagent: syncing %s: %w", dest, err)
	}
	return res, nil
}

// openSource opens a backup image for reading.
func (p *Platform) openSource(ctx context.Context, from string) (Target, error) {
	if IsNBDURI(from) {
		if openNBDSource == nil {
			return nil, fmt.Errorf("%w: NBD sources need package nbd", ErrUnavailable)
		}
		return openNBDSource(ctx, from)
	}
	f, err := os.Open(from)
	if err != nil {
		return nil, fmt.Errorf("linuxagent: backup image: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("linuxagent: %s is not an image file", from)
	}
	return &fileTarget{f: f, size: st.Size()}, nil
}

// destination is what a restore writes to.
type destination interface {
	io.WriterAt
	Sync() error
	Close() error
}

// openDestination opens a block device (refused when mounted or too
// small) or creates a sparse file of size bytes. sparse is true for a
// file, whose zero chunks need no writing.
func (p *Platform) openDestination(dest string, size int64, force bool) (destination, bool, error) {
	st, err := os.Stat(dest)
	switch {
	case err == nil && st.Mode()&os.ModeDevice != 0:
		if p.Mounts == nil {
			return nil, false, fmt.Errorf("%w: checking that %s is not mounted needs package blockdev", ErrUnavailable, dest)
		}
		ms, err := p.Mounts(dest)
		if err != nil {
			return nil, false, fmt.Errorf("linuxagent: mounts of %s: %w", dest, err)
		}
		if len(ms) > 0 {
			return nil, false, fmt.Errorf("linuxagent: %s is mounted on %s; unmount it before restoring", dest, ms[0].MountPoint)
		}
		f, err := os.OpenFile(dest, os.O_WRONLY, 0)
		if err != nil {
			return nil, false, fmt.Errorf("linuxagent: %w", err)
		}
		devSize, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			f.Close()
			return nil, false, fmt.Errorf("linuxagent: size of %s: %w", dest, err)
		}
		if devSize < size {
			f.Close()
			return nil, false, fmt.Errorf("linuxagent: %s holds %d bytes, the image %d", dest, devSize, size)
		}
		return f, false, nil
	case err == nil && !st.Mode().IsRegular():
		return nil, false, fmt.Errorf("linuxagent: %s is neither a block device nor a regular file", dest)
	case err == nil && st.Size() > 0 && !force:
		return nil, false, fmt.Errorf("linuxagent: %s exists; pass --force to overwrite it", dest)
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return nil, false, fmt.Errorf("linuxagent: %w", err)
	}
	f, err := os.OpenFile(dest, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("linuxagent: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, false, fmt.Errorf("linuxagent: sizing %s: %w", dest, err)
	}
	return f, true, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
