package mtcp

import (
	"os"
	"path"
	"runtime"
)

const cgroupRoot = "/sys/fs/cgroup"

// SystemResources reads the memory and CPUs available to this process:
// /proc/meminfo and runtime.NumCPU, lowered by the limits of the cgroup
// (v2 memory.max and cpu.max, or v1 memory.limit_in_bytes and
// cpu.cfs_quota_us) of this process and of its ancestors.
func SystemResources() Resources {
	res := Resources{Memory: -1, CPUs: runtime.NumCPU()}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		if v, ok := parseMeminfo(f); ok {
			res.Memory = v
		}
		f.Close()
	}
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return res
	}
	v2, v1 := cgroupPaths(f)
	f.Close()
	lowerMem := func(v int64) {
		if res.Memory < 0 || v < res.Memory {
			res.Memory = v
		}
	}
	// Walk from the process's cgroup up to the root: every ancestor's
	// limit applies too. A container often sees its own cgroup as the
	// mount's root, so the root itself is read last.
	walk := func(base, p string, fn func(dir string)) {
		for {
			fn(path.Join(base, p))
			if p == "/" || p == "." || p == "" {
				return
			}
			p = path.Dir(p)
		}
	}
	if v2 != "" {
		walk(cgroupRoot, v2, func(dir string) {
			if v, ok := parseMemoryLimit(readFile(dir + "/memory.max")); ok {
				lowerMem(v)
			}
			if n, ok := parseCPUMax(readFile(dir + "/cpu.max")); ok && n < res.CPUs {
				res.CPUs = n
			}
		})
	}
	if p, ok := v1["memory"]; ok {
		walk(cgroupRoot+"/memory", p, func(dir string) {
			if v, ok := parseMemoryLimit(readFile(dir + "/memory.limit_in_bytes")); ok {
				lowerMem(v)
			}
		})
	}
	if p, ok := v1["cpu"]; ok {
		walk(cgroupRoot+"/cpu", p, func(dir string) {
			if n, ok := parseCFSQuota(readFile(dir+"/cpu.cfs_quota_us"), readFile(dir+"/cpu.cfs_period_us")); ok && n < res.CPUs {
				res.CPUs = n
			}
		})
	}
	return res
}

func readFile(name string) string {
	b, err := os.ReadFile(name)
	if err != nil {
		return ""
	}
	return string(b)
}
