package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// IsNBDURI reports whether target names an NBD export rather than a local
// image file.
func IsNBDURI(target string) bool {
	for _, p := range []string{"nbd://", "nbd+unix://", "nbds://", "nbds+unix://"} {
		if strings.HasPrefix(target, p) {
			return true
		}
	}
	return false
}

// openTarget is the default Platform.OpenTarget.
func openTarget(ctx context.Context, target string, src Device, diff bool) (Target, error) {
	if IsNBDURI(target) {
		if openNBD == nil {
			return nil, fmt.Errorf("%w: NBD targets need package nbd", ErrUnavailable)
		}
		return openNBD(ctx, target, src, diff)
	}
	if err := prepareImage(target, src.Size()); err != nil {
		return nil, err
	}
	if serveImage != nil {
		return serveImage(ctx, target, src, diff)
	}
	return openFileTarget(target)
}

// openNBD connects to an NBD export for a backup of src (a diff reads it
// too); serveImage serves a local image through the embedded NBD server
// and connects to it; openNBDSource opens an export for reading. All are
// set by wire_nbd.go.
var (
	openNBD       func(ctx context.Context, uri string, src io.ReaderAt, diff bool) (Target, error)
	openNBDSource func(ctx context.Context, uri string) (Target, error)
	serveImage    func(ctx context.Context, path string, src io.ReaderAt, diff bool) (Target, error)
)

// prepareImage creates a sparse image file of size bytes, and its
// directory if need be, or grows an existing smaller one; an image larger
// than the device is refused, since it would not be the device's image.
func prepareImage(path string, size int64) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("linuxagent: target directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("linuxagent: target image: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("linuxagent: target image: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("linuxagent: target %s is not a regular file; a device target needs an NBD server in front of it", path)
	}
	switch {
	case st.Size() > size:
		return fmt.Errorf("linuxagent: target image %s is %d bytes, larger than the %d-byte device", path, st.Size(), size)
	case st.Size() < size:
		if err := f.Truncate(size); err != nil {
			return fmt.Errorf("linuxagent: sizing target image: %w", err)
		}
	}
	return nil
}

// fileTarget writes a local image directly. It is the target when the
// build has no NBD server to put in front of the image.
type fileTarget struct {
	f    *os.File
	size int64
}

func openFileTarget(path string) (Target, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("linuxagent: target image: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &fileTarget{f: f, size: st.Size()}, nil
}

func (t *fileTarget) WriteAt(ctx context.Context, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > t.size {
		return fmt.Errorf("linuxagent: write of %d bytes at %d past the %d-byte image", len(p), off, t.size)
	}
	_, err := t.f.WriteAt(p, off)
	return err
}

func (t *fileTarget) Flush(ctx context.Context) error { return t.f.Sync() }

func (t *fileTarget) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	n, err := t.f.ReadAt(p, off)
	if errors.Is(err, io.EOF) && n == len(p) {
		err = nil
	}
	return n, err
}

func (t *fileTarget) Size() int64  { return t.size }
func (t *fileTarget) Close() error { return t.f.Close() }
