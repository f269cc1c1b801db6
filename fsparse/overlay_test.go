package fsparse

import "io"

// overlay reads as base with patch written at offset at, so that a fuzz
// run does not copy the whole image per input.
type overlay struct {
	base  []byte
	patch []byte
	at    int64
}

func (o *overlay) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= int64(len(o.base)) {
		return 0, io.EOF
	}
	n := copy(p, o.base[off:])
	// Lay the part of the patch that overlaps [off, off+n).
	lo, hi := max(off, o.at), min(off+int64(n), o.at+int64(len(o.patch)))
	if lo < hi {
		copy(p[lo-off:hi-off], o.patch[lo-o.at:hi-o.at])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
