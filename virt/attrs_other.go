//go:build !linux

package virt

import (
	"errors"
	"os"
)

// ReadAttrs is only implemented on Linux.
func ReadAttrs(path string) (FileAttrs, error) { return FileAttrs{}, errors.ErrUnsupported }

// ApplyAttrs is only implemented on Linux.
func ApplyAttrs(f *os.File, a FileAttrs) (selinuxErr error, err error) {
	return nil, errors.ErrUnsupported
}
