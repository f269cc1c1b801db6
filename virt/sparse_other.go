//go:build !linux

package virt

import "os"

// nextData treats the whole file as data where SEEK_DATA is not used.
func nextData(f *os.File, off, size int64) (int64, int64, error) {
	return off, size, nil
}
