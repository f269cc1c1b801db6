package virt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/blockimage/blockimage/internal/iox"
)

const (
	// copyChunk is how much is read at a time.
	copyChunk = 1 << 20
	// zeroGrain is the granularity at which all-zero data becomes a hole:
	// the common filesystem block size.
	zeroGrain = 4096
)

var zeros = make([]byte, copyChunk)

// Digest is the result of a copy.
type Digest struct {
	// SHA256 is the hex SHA-256 of the logical content: Size bytes, with
	// holes read as zeros.
	SHA256 string
	// Size is the logical size in bytes.
	Size int64
	// DataBytes counts the bytes written as data; the rest became holes
	// (or, for WriteLogical, zeros in the stream).
	DataBytes int64
}

// A Copier moves a disk image's logical content. Its zero value is ready
// to use.
type Copier struct {
	// Progress, when set, is called after each chunk with the logical
	// bytes done and the total.
	Progress func(done, total int64)
	// NoSync skips the fsync of the destination at the end of CopySparse
	// and ReadLogical, for a caller that syncs later: a backup of a
	// running guest syncs after the guest is resumed, to keep the sync
	// out of its downtime.
	NoSync bool
	// NoHash skips the SHA-256 in CopySparse (Digest.SHA256 is then
	// empty), for a copy that must be as fast as possible, such as the one
	// made while a guest is stopped; Hash computes it later.
	NoHash bool
}

// CopySparse copies size bytes of src to dst, a new or empty file: holes
// of src (SEEK_HOLE) and all-zero 4 KiB blocks are not written, and dst is
// truncated to size, so they are holes in dst too. src may be a regular
// file or a block device.
func (c Copier) CopySparse(ctx context.Context, dst, src *os.File, size int64) (Digest, error) {
	if err := dst.Truncate(size); err != nil {
		return Digest{}, fmt.Errorf("virt: %w", err)
	}
	sw := &sparseWriter{f: dst}
	var h hash.Hash
	if !c.NoHash {
		h = sha256.New()
	}
	err := c.walk(ctx, src, size, h, func(p []byte) error { _, err := sw.Write(p); return err }, func(n int64) error { sw.off += n; return nil })
	if err != nil {
		return Digest{}, err
	}
	if err := c.sync(dst); err != nil {
		return Digest{}, err
	}
	d := Digest{Size: size, DataBytes: sw.data}
	if h != nil {
		d.SHA256 = hex.EncodeToString(h.Sum(nil))
	}
	return d, nil
}

// Hash returns the SHA-256 of size bytes of src's logical content (holes
// read as zeros, without reading them); DataBytes counts the bytes in
// data extents.
func (c Copier) Hash(ctx context.Context, src *os.File, size int64) (Digest, error) {
	h := sha256.New()
	var data int64
	err := c.walk(ctx, src, size, h, func(p []byte) error { data += int64(len(p)); return nil }, func(int64) error { return nil })
	if err != nil {
		return Digest{}, err
	}
	return Digest{SHA256: hex.EncodeToString(h.Sum(nil)), Size: size, DataBytes: data}, nil
}

// WriteLogical writes size bytes of src's logical content to w, holes as
// zeros, for a compressor that makes them small.
func (c Copier) WriteLogical(ctx context.Context, w io.Writer, src *os.File, size int64) (Digest, error) {
	h := sha256.New()
	var data int64
	err := c.walk(ctx, src, size, h, func(p []byte) error {
		data += int64(len(p))
		_, err := w.Write(p)
		return err
	}, func(n int64) error {
		for n > 0 {
			k := min(n, int64(len(zeros)))
			if _, err := w.Write(zeros[:k]); err != nil {
				return err
			}
			n -= k
		}
		return nil
	})
	if err != nil {
		return Digest{}, err
	}
	return Digest{SHA256: hex.EncodeToString(h.Sum(nil)), Size: size, DataBytes: data}, nil
}

// ReadLogical writes the stream r, which must hold exactly size bytes, to
// dst, a new or empty file, sparsely: all-zero 4 KiB blocks stay holes and
// dst ends up exactly size bytes long. A shorter or longer stream is an
// error wrapping ErrSize.
func (c Copier) ReadLogical(ctx context.Context, dst *os.File, r io.Reader, size int64) (Digest, error) {
	if err := dst.Truncate(size); err != nil {
		return Digest{}, fmt.Errorf("virt: %w", err)
	}
	sw := &sparseWriter{f: dst}
	h := sha256.New()
	buf := make([]byte, copyChunk)
	var done int64
	for done < size {
		if err := ctx.Err(); err != nil {
			return Digest{}, err
		}
		n, err := io.ReadFull(r, buf[:min(int64(len(buf)), size-done)])
		if n > 0 {
			h.Write(buf[:n])
			if _, werr := sw.Write(buf[:n]); werr != nil {
				return Digest{}, werr
			}
			done += int64(n)
			if c.Progress != nil {
				c.Progress(done, size)
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return Digest{}, fmt.Errorf("%w: stream ended after %d of %d bytes", ErrSize, done, size)
		}
		if err != nil {
			return Digest{}, fmt.Errorf("virt: reading: %w", err)
		}
	}
	var one [1]byte
	if n, err := io.ReadFull(r, one[:]); n > 0 {
		return Digest{}, fmt.Errorf("%w: stream is longer than %d bytes", ErrSize, size)
	} else if err != nil && !errors.Is(err, io.EOF) {
		return Digest{}, fmt.Errorf("virt: reading: %w", err)
	}
	if err := c.sync(dst); err != nil {
		return Digest{}, err
	}
	return Digest{SHA256: hex.EncodeToString(h.Sum(nil)), Size: size, DataBytes: sw.data}, nil
}

func (c Copier) sync(f *os.File) error {
	if c.NoSync {
		return nil
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("virt: %w", err)
	}
	return nil
}

// walk feeds size bytes of src to data (data regions) and hole (hole
// lengths), hashing the logical content into h unless h is nil.
func (c Copier) walk(ctx context.Context, src *os.File, size int64, h hash.Hash, data func([]byte) error, hole func(int64) error) error {
	buf := make([]byte, copyChunk)
	hashZeros := func(n int64) {
		for h != nil && n > 0 {
			k := min(n, int64(len(zeros)))
			h.Write(zeros[:k])
			n -= k
		}
	}
	var pos int64
	for pos < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		start, end, err := nextData(src, pos, size)
		if err != nil {
			return fmt.Errorf("virt: finding data in %s: %w", src.Name(), err)
		}
		if start > pos {
			hashZeros(start - pos)
			if err := hole(start - pos); err != nil {
				return fmt.Errorf("virt: %w", err)
			}
			pos = start
		}
		for pos < end {
			if err := ctx.Err(); err != nil {
				return err
			}
			n, err := src.ReadAt(buf[:min(int64(len(buf)), end-pos)], pos)
			if n == 0 && err != nil {
				if errors.Is(err, io.EOF) {
					return fmt.Errorf("%w: %s ended at %d, expected %d bytes", ErrSize, src.Name(), pos, size)
				}
				return fmt.Errorf("virt: reading %s: %w", src.Name(), err)
			}
			if h != nil {
				h.Write(buf[:n])
			}
			if err := data(buf[:n]); err != nil {
				return fmt.Errorf("virt: %w", err)
			}
			pos += int64(n)
			if c.Progress != nil {
				c.Progress(pos, size)
			}
		}
	}
	if c.Progress != nil {
		c.Progress(size, size)
	}
	return nil
}

// sparseWriter writes sequentially at off, skipping all-zero grains so
// that they stay holes in a file truncated to its final size beforehand.
type sparseWriter struct {
	f    *os.File
	off  int64
	data int64
}

func (w *sparseWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		// Find the next run of non-zero grains, aligned to the file.
		i := 0
		for i < len(p) {
			g := int(min(int64(len(p)-i), zeroGrain-(w.off+int64(i))%zeroGrain))
			if !bytes.Equal(p[i:i+g], zeros[:g]) {
				break
			}
			i += g
		}
		w.off += int64(i)
		p = p[i:]
		j := 0
		for j < len(p) {
			g := int(min(int64(len(p)-j), zeroGrain-(w.off+int64(j))%zeroGrain))
			if bytes.Equal(p[j:j+g], zeros[:g]) {
				break
			}
			j += g
		}
		if j > 0 {
			if _, err := w.f.WriteAt(p[:j], w.off); err != nil {
				return total - len(p), err
			}
			w.off += int64(j)
			w.data += int64(j)
			p = p[j:]
		}
	}
	return total, nil
}

// FileSHA256 returns the hex SHA-256 and length of a whole file.
func FileSHA256(ctx context.Context, path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, iox.ContextReader{Ctx: ctx, R: f})
	if err != nil {
		return "", n, fmt.Errorf("virt: reading %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
