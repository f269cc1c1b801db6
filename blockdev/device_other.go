//go:build !linux

package blockdev

import (
	"errors"
	"os"
)

const oDirect = 0

// openDevice outside Linux opens regular image files only.
func openDevice(path string, flag int) (*Device, error) {
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, &os.PathError{Op: "open", Path: path, Err: errors.ErrUnsupported}
	}
	return &Device{f: f, path: path, size: st.Size(), logical: 512, physical: 512, memAlign: 512}, nil
}
