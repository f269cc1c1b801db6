package inspect

import (
	"fmt"
	"os"

	"github.com/blockimage/blockimage/blockdev"
)

// openDevice opens an image file through the page cache, or a block
// device with O_DIRECT: a mounted filesystem such as XFS writes its
// metadata around the block device's page cache, so a buffered read of a
// mounted (even frozen) device can return blocks older than those on disk,
// and a map made from them would miss blocks in use.
func openDevice(path string) (*blockdev.Device, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	switch m := st.Mode(); {
	case m.IsDir():
		return nil, fmt.Errorf("%s is a directory, not a block device or image file", path)
	case m.IsRegular():
		return blockdev.Open(path, os.O_RDONLY)
	case m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0:
		return blockdev.Open(path, os.O_RDONLY|oDirect)
	default:
		return nil, fmt.Errorf("%s is not a block device or image file (%v)", path, m.Type())
	}
}
