//go:build !linux

package testenv

import "syscall"

// serverProcAttr puts a server in its own process group, so that Stop
// reaches its children. Only Linux can also tie its life to ours.
func serverProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
