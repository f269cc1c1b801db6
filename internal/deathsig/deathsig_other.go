//go:build !linux

package deathsig

import "os/exec"

// Start starts cmd. Only Linux can tie a child's life to ours.
func Start(cmd *exec.Cmd) error { return cmd.Start() }
