package testenv

import "syscall"

// serverProcAttr puts a server in its own process group, so that Stop
// reaches its children, and kills it if the test process dies first.
func serverProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
