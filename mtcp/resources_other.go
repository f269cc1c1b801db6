//go:build !linux

package mtcp

import "runtime"

// SystemResources returns runtime.NumCPU and an unknown memory size (-1)
// outside Linux; the child count is then limited by CPUs only.
func SystemResources() Resources { return Resources{Memory: -1, CPUs: runtime.NumCPU()} }
