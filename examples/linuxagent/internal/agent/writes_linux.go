package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// writeCount returns how many sectors the kernel has written to device
// since boot (/sys/class/block/NAME/stat, field 7). A daemon that stops
// records it, and on start compares: an equal count proves nothing was
// written while no tracer ran.
func writeCount(device string) (uint64, error) {
	real, err := filepath.EvalSymlinks(device)
	if err != nil {
		return 0, err
	}
	data, err := os.ReadFile(filepath.Join("/sys/class/block", filepath.Base(real), "stat"))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(data))
	if len(f) < 7 {
		return 0, fmt.Errorf("linuxagent: short block stat for %s: %q", device, data)
	}
	return strconv.ParseUint(f[6], 10, 64)
}
