package nbd

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// Sync is fdatasync(2): data and the metadata needed to read it back.
func (b *FileBackend) Sync() error {
	if err := unix.Fdatasync(int(b.f.Fd())); err != nil {
		return os.NewSyscallError("fdatasync", err)
	}
	return nil
}

// Punch deallocates the range with fallocate(2) FALLOC_FL_PUNCH_HOLE.
func (b *FileBackend) Punch(off, length int64) error {
	err := unix.Fallocate(int(b.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if errors.Is(err, unix.EOPNOTSUPP) {
		return b.writeZeroes(off, length)
	}
	if err != nil {
		return os.NewSyscallError("fallocate(PUNCH_HOLE)", err)
	}
	return nil
}

// Zero zeroes the range with fallocate(2) FALLOC_FL_ZERO_RANGE, or by
// writing zeroes where the filesystem lacks it.
func (b *FileBackend) Zero(off, length int64) error {
	err := unix.Fallocate(int(b.f.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if errors.Is(err, unix.EOPNOTSUPP) {
		return b.writeZeroes(off, length)
	}
	if err != nil {
		return os.NewSyscallError("fallocate(ZERO_RANGE)", err)
	}
	return nil
}

// Allocation finds data and holes with lseek(2) SEEK_DATA and SEEK_HOLE
// (it uses no file offset the other methods rely on: they use pread and
// pwrite).
func (b *FileBackend) Allocation(off, length int64) ([]BlockExtent, error) {
	fd := int(b.f.Fd())
	end := off + length
	var out []BlockExtent
	for pos := off; pos < end && len(out) < 1024; {
		data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = end // only a hole up to the end of the file
		} else if err != nil {
			return nil, os.NewSyscallError("lseek(SEEK_DATA)", err)
		}
		if data > pos {
			n := min(data, end) - pos
			out = append(out, BlockExtent{Offset: pos, Length: n, Flags: StateHole | StateZero})
			pos += n
			continue
		}
		hole, err := unix.Seek(fd, pos, unix.SEEK_HOLE)
		if err != nil {
			return nil, os.NewSyscallError("lseek(SEEK_HOLE)", err)
		}
		n := min(hole, end) - pos
		if n <= 0 {
			n = end - pos // the file changed under us: call it data
		}
		out = append(out, BlockExtent{Offset: pos, Length: n})
		pos += n
	}
	return out, nil
}
