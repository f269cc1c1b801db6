//go:build !linux

package nbd

// Sync is fsync(2).
func (b *FileBackend) Sync() error { return b.f.Sync() }

// Punch writes zeroes: hole punching is Linux-only here.
func (b *FileBackend) Punch(off, length int64) error { return b.Zero(off, length) }

// Zero writes zeroes.
func (b *FileBackend) Zero(off, length int64) error { return b.writeZeroes(off, length) }

// Allocation reports everything as data.
func (b *FileBackend) Allocation(off, length int64) ([]BlockExtent, error) {
	return []BlockExtent{{Offset: off, Length: length}}, nil
}
