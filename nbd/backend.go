package nbd

import (
	"fmt"
	"io"
	"os"
)

// A Backend stores an export's data for a [Server]. Its methods are called
// concurrently.
type Backend interface {
	io.ReaderAt
	io.WriterAt
	// Size is the export's size in bytes.
	Size() int64
	// Sync makes every completed write durable.
	Sync() error
	// Punch deallocates the range; it reads as zeroes afterwards.
	Punch(off, length int64) error
	// Zero writes zeroes to the range, keeping it allocated.
	Zero(off, length int64) error
	// Allocation describes the range as extents with StateHole and
	// StateZero flags (base:allocation), starting at off. It may stop
	// before off+length, but returns at least one extent.
	Allocation(off, length int64) ([]BlockExtent, error)
}

// A FileBackend is a Backend over a (sparse) regular file: TRIM and
// WRITE_ZEROES punch holes, FLUSH is fdatasync, and block status comes
// from SEEK_DATA/SEEK_HOLE.
type FileBackend struct {
	f    *os.File
	size int64
}

// NewFileBackend opens an existing file read-write. The export's size is
// the file's size.
func NewFileBackend(path string) (*FileBackend, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("nbd: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("nbd: %w", err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("nbd: %s is not a regular file", path)
	}
	return &FileBackend{f: f, size: st.Size()}, nil
}

// ReadAt reads from the file; bytes past its end read as zeroes.
func (b *FileBackend) ReadAt(p []byte, off int64) (int, error) {
	n, err := b.f.ReadAt(p, off)
	if err == io.EOF {
		clear(p[n:])
		return len(p), nil
	}
	return n, err
}

// WriteAt writes to the file.
func (b *FileBackend) WriteAt(p []byte, off int64) (int, error) { return b.f.WriteAt(p, off) }

// Size returns the file's size when it was opened.
func (b *FileBackend) Size() int64 { return b.size }

// Close closes the file.
func (b *FileBackend) Close() error { return b.f.Close() }

// writeZeroes writes length zero bytes at off, where the file system
// cannot zero a range by itself.
func (b *FileBackend) writeZeroes(off, length int64) error {
	for length > 0 {
		n := min(length, int64(len(zeroPage)))
		if _, err := b.f.WriteAt(zeroPage[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}
