package mtcp

import (
	"bufio"
	"io"
	"math"
	"strconv"
	"strings"
)

// Resources is what the machine (or the cgroup the process runs in)
// gives the pool.
type Resources struct {
	Memory int64 // bytes: the cgroup limit when lower than the RAM, else MemTotal
	CPUs   int   // runtime.NumCPU, lowered by a cgroup CPU quota
}

// parseMemoryLimit reads a cgroup v2 memory.max or v1
// memory.limit_in_bytes value. "max" and absurdly large v1 values (the
// kernel's "unlimited" is the page-rounded maximum int64) mean no limit.
func parseMemoryLimit(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	if s == "" || s == "max" {
		return 0, false
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v <= 0 || v >= 1<<62 {
		return 0, false
	}
	return v, true
}

// parseCPUMax reads cgroup v2 cpu.max ("QUOTA PERIOD" or "max PERIOD")
// and returns the CPUs it allows, rounded up.
func parseCPUMax(s string) (int, bool) {
	f := strings.Fields(s)
	if len(f) == 0 || f[0] == "max" {
		return 0, false
	}
	quota, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil || quota <= 0 {
		return 0, false
	}
	period := int64(100000)
	if len(f) > 1 {
		if period, err = strconv.ParseInt(f[1], 10, 64); err != nil || period <= 0 {
			return 0, false
		}
	}
	return cpusOf(quota, period), true
}

// parseCFSQuota reads cgroup v1 cpu.cfs_quota_us and cpu.cfs_period_us.
func parseCFSQuota(quota, period string) (int, bool) {
	q, err1 := strconv.ParseInt(strings.TrimSpace(quota), 10, 64)
	p, err2 := strconv.ParseInt(strings.TrimSpace(period), 10, 64)
	if err1 != nil || err2 != nil || q <= 0 || p <= 0 {
		return 0, false
	}
	return cpusOf(q, p), true
}

func cpusOf(quota, period int64) int {
	return max(1, int(math.Ceil(float64(quota)/float64(period))))
}

// parseMeminfo returns MemTotal from /proc/meminfo, in bytes.
func parseMeminfo(r io.Reader) (int64, bool) {
	s := bufio.NewScanner(r)
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) >= 2 && f[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil || kb <= 0 || kb > math.MaxInt64/1024 {
				return 0, false
			}
			return kb * 1024, true
		}
	}
	return 0, false
}

// cgroupPaths parses /proc/self/cgroup into the v2 path ("0::/x") and
// the v1 paths by controller.
func cgroupPaths(r io.Reader) (v2 string, v1 map[string]string) {
	v1 = map[string]string{}
	s := bufio.NewScanner(r)
	for s.Scan() {
		parts := strings.SplitN(s.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			v2 = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			v1[c] = parts[2]
		}
	}
	return v2, v1
}
