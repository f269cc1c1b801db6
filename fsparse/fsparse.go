// Package fsparse finds the blocks a filesystem uses, by reading its
// metadata from any io.ReaderAt (a block device, a loop device, an image
// file), so that a full backup reads only those blocks.
//
// Detect names the filesystem from its superblock; InUse also maps the
// in-use extents. Each supported filesystem lives in its own files
// (ext.go, xfs.go, reiserfs.go, ...) and registers a prober here.
//
// Everything read from disk is untrusted: lengths, counts and offsets are
// checked against the device size before use, so a damaged image yields
// an error wrapping ErrCorrupt, never a panic, a hang or an allocation
// proportional to a number on disk. When the filesystem is unknown or
// damaged, a caller that must still back the device up can fall back to
// AllBlocks, which treats every block as in use.
package fsparse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync/atomic"
)

// An Extent is a byte range of the device.
type Extent struct {
	Offset, Length int64
}

// End returns the offset just past the extent.
func (e Extent) End() int64 { return e.Offset + e.Length }

// Info describes a filesystem.
type Info struct {
	// Filesystem is the type: "ext2", "ext3", "ext4", "xfs", "reiserfs";
	// Detect also names "btrfs", "vfat" and "swap".
	Filesystem string
	// BlockSize is the allocation unit in bytes (the cluster size on a
	// bigalloc ext4).
	BlockSize int64
	// TotalBytes is the size the filesystem covers, which can be less
	// than the device size.
	TotalBytes int64
	// UsedBytes and FreeBytes come from the allocation metadata (bitmaps,
	// free space trees), not from the superblock's counters, which can be
	// stale on a filesystem that was not cleanly unmounted.
	UsedBytes, FreeBytes int64
	Label, UUID          string
	// MetadataBytesRead counts the bytes InUse read to build the map.
	MetadataBytesRead int64
	// Notes are facts a caller should know, such as an external log or a
	// realtime section that lives on another device.
	Notes []string
}

var (
	// ErrUnknownFilesystem reports that no supported superblock was found.
	ErrUnknownFilesystem = errors.New("fsparse: unknown filesystem")
	// ErrCorrupt reports metadata that is inconsistent or out of bounds.
	ErrCorrupt = errors.New("fsparse: corrupt filesystem metadata")
	// ErrUnsupported reports a recognised filesystem using a feature this
	// package cannot map exactly.
	ErrUnsupported = errors.New("fsparse: unsupported filesystem feature")
	// ErrNeedsRecovery reports a filesystem whose journal or log holds
	// committed metadata not yet written in place: it is mounted and not
	// frozen, or was not cleanly unmounted. Its on-disk allocation maps
	// may be stale, so a map built from them could miss blocks in use.
	// Freeze the filesystem (which checkpoints the journal) or replay the
	// journal, then map again; or fall back to AllBlocks.
	ErrNeedsRecovery = errors.New("fsparse: filesystem needs journal recovery")
)

// corrupt returns an error wrapping ErrCorrupt.
func corrupt(fs, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrCorrupt, fs, fmt.Sprintf(format, args...))
}

// A filesystem is one supported type, registered by its own file.
type filesystem struct {
	name string
	// probe reports whether the superblock belongs to this type. It reads
	// only the superblock and must not fail on foreign data.
	probe func(r io.ReaderAt, size int64) bool
	// detect reads the superblock only.
	detect func(r io.ReaderAt, size int64) (Info, error)
	// inUse maps the in-use extents, sorted and merged.
	inUse func(ctx context.Context, r io.ReaderAt, size int64) (Info, []Extent, error)
	// detectOnly types (named, not mapped) are probed after the others,
	// so that a stale foreign signature never hides a mappable one.
	detectOnly bool
}

var filesystems []filesystem

// register adds a filesystem type; called from init functions only.
func register(fs filesystem) { filesystems = append(filesystems, fs) }

func find(r io.ReaderAt, size int64) (filesystem, error) {
	for _, pass := range []bool{false, true} {
		for _, fs := range filesystems {
			if fs.detectOnly == pass && fs.probe(r, size) {
				return fs, nil
			}
		}
	}
	return filesystem{}, ErrUnknownFilesystem
}

// Detect identifies the filesystem on r, a device of size bytes, from its
// superblock alone. Besides the types InUse maps, it names btrfs, FAT
// ("vfat") and Linux swap, for which InUse returns ErrUnsupported.
func Detect(r io.ReaderAt, size int64) (Info, error) {
	fs, err := find(r, size)
	if err != nil {
		return Info{}, err
	}
	return fs.detect(r, size)
}

// InUse identifies the filesystem on r and returns its in-use extents in
// bytes, sorted and merged. Info.MetadataBytesRead tells how much it read.
func InUse(ctx context.Context, r io.ReaderAt, size int64) (Info, []Extent, error) {
	fs, err := find(r, size)
	if err != nil {
		return Info{}, nil, err
	}
	cr := &countingReader{r: r}
	info, extents, err := fs.inUse(ctx, cr, size)
	info.MetadataBytesRead = cr.n.Load()
	return info, extents, err
}

// AllBlocks is the fallback for an unknown or damaged filesystem: the
// whole device as one extent.
func AllBlocks(size int64) []Extent {
	if size <= 0 {
		return nil
	}
	return []Extent{{0, size}}
}

// Merge sorts extents and joins those that touch or overlap, dropping
// empty ones.
func Merge(es []Extent) []Extent {
	sort.Slice(es, func(i, j int) bool { return es[i].Offset < es[j].Offset })
	out := es[:0]
	for _, e := range es {
		if e.Length <= 0 {
			continue
		}
		if n := len(out); n > 0 && e.Offset <= out[n-1].End() {
			if e.End() > out[n-1].End() {
				out[n-1].Length = e.End() - out[n-1].Offset
			}
			continue
		}
		out = append(out, e)
	}
	return out
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.ReaderAt
	n atomic.Int64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}
