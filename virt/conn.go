package virt

// DefaultURI is the hypervisor URI Connect uses when given "".
const DefaultURI = "qemu:///system"

// DomainState is a domain's libvirt state, in virsh's words.
type DomainState string

// Domain states (virDomainState).
const (
	StateNoState     DomainState = "nostate"
	StateRunning     DomainState = "running"
	StateBlocked     DomainState = "blocked"
	StatePaused      DomainState = "paused"
	StateShutdown    DomainState = "shutdown"
	StateShutoff     DomainState = "shutoff"
	StateCrashed     DomainState = "crashed"
	StatePMSuspended DomainState = "pmsuspended"
)

// Active reports whether a domain in this state has a running qemu, whose
// memory a backup must save.
func (s DomainState) Active() bool {
	switch s {
	case StateRunning, StateBlocked, StatePaused, StateShutdown, StatePMSuspended:
		return true
	}
	return false
}
