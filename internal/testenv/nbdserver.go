package testenv

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockimage/blockimage/internal/deathsig"
)

// NBDServerKind names a real NBD server program.
type NBDServerKind string

// The NBD servers a test can start.
const (
	NBDServer NBDServerKind = "nbd-server" // nbd-server 3.24: no structured replies
	QemuNBD   NBDServerKind = "qemu-nbd"   // multi-conn only with Args -e N
	Nbdkit    NBDServerKind = "nbdkit"     // plugins and filters for fault injection
)

// NBDOptions configures [StartNBD]. The zero value serves a new 64 MiB
// sparse raw image over TCP on 127.0.0.1.
type NBDOptions struct {
	// Image is the file to serve. Default: a new sparse file of Size.
	Image string
	// Size is the size of the new image when Image is empty.
	// Default 64 MiB.
	Size int64
	// Format is qemu-nbd's image format, raw (default) or qcow2.
	Format string
	// Unix serves on a Unix socket instead of TCP.
	Unix bool
	// ReadOnly serves the export read-only.
	ReadOnly bool
	// Plugin is nbdkit's plugin: "file" (default, serving Image) or
	// "memory" (a RAM disk of Size; Image is ignored).
	Plugin string
	// Filters are nbdkit filters, in order, for example "error" or
	// "delay"; their parameters go in Args as key=value.
	Filters []string
	// Args are extra arguments: for qemu-nbd and nbdkit they are passed
	// on the command line (nbdkit's after the plugin, so key=value
	// parameters work); for nbd-server they are extra "key = value"
	// lines in the export's section.
	Args []string
}

// ExportName is the export every test server serves.
const ExportName = "blockimage"

// An NBD is a running NBD server that the test owns.
type NBD struct {
	Kind NBDServerKind
	// Network and Address are what net.Dial takes: "tcp" and
	// "127.0.0.1:port", or "unix" and a socket path.
	Network, Address string
	// Export is the export name, [ExportName].
	Export string
	// URI is the export's NBD URI, for nbdinfo, nbdcopy and qemu-img:
	// nbd://127.0.0.1:port/blockimage or
	// nbd+unix:///blockimage?socket=PATH.
	URI string
	// Image is the served file ("" for nbdkit's memory plugin).
	Image string

	opts NBDOptions
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
	// daemon is the PID of nbd-server, which always daemonizes: with -d
	// it would serve a single connection and exit.
	daemon int
}

// StartNBD starts a real NBD server of the given kind, waits until it
// accepts connections and stops it when the test ends. The server listens
// on loopback or a Unix socket only.
func StartNBD(t testing.TB, kind NBDServerKind, o NBDOptions) *NBD {
	t.Helper()
	Require(t, Commands(string(kind)))
	if o.Size == 0 {
		o.Size = 64 << 20
	}
	s := &NBD{Kind: kind, Export: ExportName, opts: o, dir: TempDir(t)}
	if kind != Nbdkit || o.Plugin == "" || o.Plugin == "file" {
		s.Image = o.Image
		if s.Image == "" {
			s.Image = NewImage(t, o.Size)
		}
	}
	track(t, s.kill)
	var lastErr error
	// A free TCP port can be taken between our probe and the server's
	// bind; try a few ports before giving up.
	for attempt := 0; attempt < 5; attempt++ {
		if lastErr = s.start(); lastErr == nil {
			return s
		}
	}
	t.Fatalf("testenv: starting %s: %v", kind, lastErr)
	return nil
}

// Stop kills the server, as a crash would, and waits for it to exit.
func (s *NBD) Stop(t testing.TB) {
	t.Helper()
	s.kill()
}

// Restart starts the server again on the same address after [NBD.Stop],
// serving the same image.
func (s *NBD) Restart(t testing.TB) {
	t.Helper()
	s.kill()
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		if err = s.startOn(s.Network, s.Address); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond) // the old socket may linger briefly
	}
	t.Fatalf("testenv: restarting %s on %s: %v", s.Kind, s.Address, err)
}

func (s *NBD) kill() {
	if s.daemon != 0 {
		killDaemon(s.daemon)
		s.daemon = 0
		// A killed nbd-server leaves its PID file: Restart would read
		// the dead daemon's PID from it and lose track of the new one.
		os.Remove(filepath.Join(s.dir, "nbd-server.pid"))
	}
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	// nbd-server forks a child per connection in its own process group.
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
	s.cmd = nil
}

func (s *NBD) start() error {
	if s.opts.Unix {
		return s.startOn("unix", filepath.Join(s.dir, "nbd.sock"))
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := l.Addr().String()
	l.Close()
	return s.startOn("tcp", addr)
}

func (s *NBD) startOn(network, address string) error {
	s.Network, s.Address = network, address
	if network == "unix" {
		os.Remove(address)
		s.URI = fmt.Sprintf("nbd+unix:///%s?socket=%s", s.Export, address)
	} else {
		s.URI = fmt.Sprintf("nbd://%s/%s", address, s.Export)
	}
	args, err := s.commandLine()
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd := exec.Command(string(s.Kind), args...)
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	// Its own process group, so that kill reaches the server's
	// children; and it dies if the test process dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := deathsig.Start(cmd); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if s.Kind == NBDServer && s.daemon == 0 {
			s.daemon = readPIDFile(filepath.Join(s.dir, "nbd-server.pid"))
		}
		select {
		case <-done:
			if s.Kind == NBDServer && cmd.ProcessState.Success() {
				break // the daemon lives on
			}
			s.cmd = nil
			return fmt.Errorf("%s %s exited: %s", s.Kind, strings.Join(args, " "), stderr.String())
		default:
		}
		if s.Kind == NBDServer && s.daemon == 0 {
			time.Sleep(20 * time.Millisecond)
			continue // without its PID we could not stop it
		}
		if c, err := net.DialTimeout(network, address, time.Second); err == nil {
			c.Close()
			if network == "unix" || s.listensHere(address) {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.kill()
	return fmt.Errorf("%s did not accept connections on %s within 30s: %s", s.Kind, address, stderr.String())
}

// listensHere reports whether the server we started, not another test's
// process that took the probed port first, listens on the TCP address.
func (s *NBD) listensHere(address string) bool {
	_, p, err := net.SplitHostPort(address)
	if err != nil {
		return false
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return false
	}
	pid := s.daemon
	if pid == 0 && s.cmd != nil && s.cmd.Process != nil {
		pid = s.cmd.Process.Pid
	}
	return pid != 0 && ownsListener(pid, port)
}

func (s *NBD) commandLine() ([]string, error) {
	o := s.opts
	switch s.Kind {
	case QemuNBD:
		format := o.Format
		if format == "" {
			format = "raw"
		}
		args := []string{"--persistent", "--export-name=" + s.Export, "--format=" + format}
		if s.Network == "unix" {
			args = append(args, "--socket="+s.Address)
		} else {
			host, port, _ := net.SplitHostPort(s.Address)
			args = append(args, "--bind="+host, "--port="+port)
		}
		if o.ReadOnly {
			args = append(args, "--read-only")
		}
		return append(append(args, o.Args...), s.Image), nil
	case Nbdkit:
		args := []string{"--foreground", "--exit-with-parent"}
		if s.Network == "unix" {
			args = append(args, "--unix="+s.Address)
		} else {
			host, port, _ := net.SplitHostPort(s.Address)
			args = append(args, "--ipaddr="+host, "--port="+port)
		}
		if o.ReadOnly {
			args = append(args, "--readonly")
		}
		for _, f := range o.Filters {
			args = append(args, "--filter="+f)
		}
		switch o.Plugin {
		case "", "file":
			args = append(args, "file", "file="+s.Image)
		case "memory":
			args = append(args, "memory", "size="+strconv.FormatInt(o.Size, 10))
		default:
			return nil, fmt.Errorf("testenv: nbdkit plugin %q is not supported", o.Plugin)
		}
		return append(args, o.Args...), nil
	case NBDServer:
		conf := filepath.Join(s.dir, "nbd-server.conf")
		var b strings.Builder
		b.WriteString("[generic]\n")
		if s.Network == "unix" {
			// With unixsock set, nbd-server does not listen on TCP.
			fmt.Fprintf(&b, "unixsock = %s\n", s.Address)
		} else {
			host, port, _ := net.SplitHostPort(s.Address)
			fmt.Fprintf(&b, "listenaddr = %s\nport = %s\n", host, port)
		}
		fmt.Fprintf(&b, "[%s]\nexportname = %s\nflush = true\nfua = true\ntrim = true\n", s.Export, s.Image)
		if o.ReadOnly {
			b.WriteString("readonly = true\n")
		}
		for _, a := range o.Args {
			b.WriteString(a + "\n")
		}
		if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
			return nil, err
		}
		return []string{"--config-file=" + conf, "--pid-file=" + filepath.Join(s.dir, "nbd-server.pid")}, nil
	}
	return nil, fmt.Errorf("testenv: unknown NBD server %q", s.Kind)
}

func readPIDFile(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return pid
}

// killDaemon kills a daemon and its process group (nbd-server forks a child
// per connection) and waits until it is gone or a zombie.
func killDaemon(pid int) {
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 500 && processRunning(pid); i++ {
		time.Sleep(10 * time.Millisecond)
	}
}

// processRunning reports whether pid exists and is not a zombie.
func processRunning(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, ok := strings.Cut(string(data), ") ")
	return ok && !strings.HasPrefix(rest, "Z")
}
