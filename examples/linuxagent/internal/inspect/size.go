package inspect

import (
	"fmt"
	"os"
)

// deviceSize returns the size of an open image file or block device.
func deviceSize(f *os.File) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	switch m := st.Mode(); {
	case m.IsRegular():
		return st.Size(), nil
	case m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0:
		return blockDeviceSize(f)
	default:
		return 0, fmt.Errorf("not a regular file or block device (%v)", m.Type())
	}
}
