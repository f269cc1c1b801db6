//go:build !linux

package agent

// oDirect is not available: the agent runs on Linux only, and elsewhere
// builds for its tests.
const oDirect = 0
