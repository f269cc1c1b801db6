//go:build !linux

package inspect

import (
	"errors"
	"fmt"
	"os"
)

// blockDeviceSize needs Linux's BLKGETSIZE64; elsewhere inspect reads
// image files only.
func blockDeviceSize(f *os.File) (int64, error) {
	return 0, fmt.Errorf("%s: block device sizes: %w", f.Name(), errors.ErrUnsupported)
}
