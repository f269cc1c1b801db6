//go:build !linux

package blockdev

import (
	"errors"
	"os"
)

func freeze(f *os.File) error       { return unsupported("FIFREEZE", f) }
func thaw(f *os.File) error         { return unsupported("FITHAW", f) }
func flushBuffers(f *os.File) error { return unsupported("BLKFLSBUF", f) }
func syncfs(f *os.File) error       { return unsupported("syncfs", f) }

func unsupported(op string, f *os.File) error {
	return &os.PathError{Op: op, Path: f.Name(), Err: errors.ErrUnsupported}
}
