package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/blockimage/blockimage/examples/linuxagent/internal/agent"
	"github.com/blockimage/blockimage/examples/linuxagent/internal/agentapi"
)

// DefaultSocket is where the daemon serves its API.
const DefaultSocket = "/run/linuxagent.sock"

// newFlags returns a flag set whose --help prints the command's usage.
func newFlags(name, usage, about string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: linuxagent %s\n\n%s\n", usage, strings.TrimSpace(about))
		var any bool
		fs.VisitAll(func(*flag.Flag) { any = true })
		if any {
			fmt.Fprint(fs.Output(), "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parse parses flags that may come before, between or after the
// positional arguments ("backup /dev/sdb --to x" as well as "backup --to
// x /dev/sdb") and returns the positional ones. ok is false, with the
// exit status, when parsing ended the command (--help or an error).
func parse(fs *flag.FlagSet, args []string, stdout io.Writer) (pos []string, status int, ok bool) {
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, 0, false
			}
			return nil, 2, false
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, 0, true
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), 0, true
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// daemonFlags are the flags of every command that talks to the daemon.
type daemonFlags struct {
	socket, stateDir, tokenFile string
}

func (d *daemonFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&d.socket, "socket", envOr("LINUXAGENT_SOCKET", DefaultSocket), "the daemon's API socket (env LINUXAGENT_SOCKET), or HOST:PORT")
	fs.StringVar(&d.stateDir, "state-dir", envOr("LINUXAGENT_STATE_DIR", agent.DefaultStateDir), "the daemon's state directory, which holds its token (env LINUXAGENT_STATE_DIR)")
	fs.StringVar(&d.tokenFile, "token-file", "", "the API token file (default STATE_DIR/token)")
}

func (d *daemonFlags) token() string {
	if d.tokenFile != "" {
		return d.tokenFile
	}
	return filepath.Join(d.stateDir, "token")
}

// addr is the API address for agentapi.NewClient.
func (d *daemonFlags) addr() string {
	if strings.HasPrefix(d.socket, "/") || strings.HasPrefix(d.socket, ".") {
		return "unix:" + d.socket
	}
	return d.socket
}

// client connects to the daemon; it fails when the daemon is not running
// or the token is unreadable.
func (d *daemonFlags) client(ctx context.Context) (*agentapi.Client, error) {
	tok, err := agentapi.ReadToken(d.token())
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("no daemon is running with state directory %s (there is no %s); start one with 'linuxagent daemon'", d.stateDir, d.token())
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("%w: talking to the daemon needs root", err)
	case err != nil:
		return nil, err
	}
	c := agentapi.NewClient(d.addr(), tok)
	if _, err := c.Devices(ctx); err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("no daemon is running: nothing answers on %s; start one with 'linuxagent daemon'", d.socket)
		}
		return nil, fmt.Errorf("the daemon on %s: %w", d.socket, err)
	}
	return c, nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// parseRate reads a rate such as 50M, 1.5G/s, 200KiB or 1048576: binary
// multiples, bytes per second.
func parseRate(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSpace(s), "/s")
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "i")
	mult := 1.0
	if t != "" {
		switch strings.ToUpper(t[len(t)-1:]) {
		case "K":
			mult = 1 << 10
		case "M":
			mult = 1 << 20
		case "G":
			mult = 1 << 30
		case "T":
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:len(t)-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	// Written so that NaN fails too: every comparison with it is false.
	if err != nil || !(v >= 0 && v*mult <= 1<<62) {
		return 0, fmt.Errorf("bad rate %q: want bytes per second, such as 50M or 1G", s)
	}
	return int64(v * mult), nil
}
