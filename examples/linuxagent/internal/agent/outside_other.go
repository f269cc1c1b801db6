//go:build !linux

package agent

// checkTargetOutside cannot compare devices off Linux; the agent runs on
// Linux only.
func checkTargetOutside(target, device string) error { return nil }

// loopDevicesOf finds no loop devices off Linux.
func loopDevicesOf(image string) []string { return nil }
