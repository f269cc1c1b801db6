//go:build !linux

package testenv

import "time"

// waitExclusive has nothing to wait for where loop devices do not exist.
func waitExclusive(string, time.Duration) error { return nil }
