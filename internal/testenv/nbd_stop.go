package testenv

import (
	"os"
	"path/filepath"
	"testing"
)

// StopForRestart is [NBD.Stop] for a server that [NBD.Restart] will start
// again. nbd-server leaves its PID file behind when it is killed; Restart
// would read the dead daemon's PID from it before the new daemon writes
// its own, so that a second Stop (and the test's cleanup) would miss the
// new daemon, which then keeps serving and leaks. StopForRestart removes
// the stale file.
func (s *NBD) StopForRestart(t testing.TB) {
	t.Helper()
	s.Stop(t)
	if s.Kind == NBDServer {
		if err := os.Remove(filepath.Join(s.dir, "nbd-server.pid")); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
}
