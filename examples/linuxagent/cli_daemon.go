package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/blockimage/blockimage/examples/linuxagent/internal/agent"
	"github.com/blockimage/blockimage/examples/linuxagent/internal/agentapi"
	"github.com/blockimage/blockimage/internal/bytesize"
)

const daemonAbout = `
Run the agent's daemon: it traces the writes to the devices it tracks, so
that incremental backups copy only what changed, runs the backups the CLI
and the HTTP API ask for, one per device at a time, and serves the API on
a Unix socket (and on a loopback TCP address with --listen). Every request
needs the token in STATE_DIR/token (created, mode 600, on first start).

On a clean stop (SIGINT, SIGTERM) each device's change set is saved with
its write counter; the next start continues from it when nothing wrote the
device in between (a filesystem writes back metadata on its own, so freeze
it around the restart to be sure: fsfreeze -f MOUNTPOINT). After an unclean
stop (the running marker is still in STATE_DIR) the dead daemon's tracing
settings are reset and every tracked device's next incremental falls back
to a diff.

Each device keeps one chain: incrementals continue from the last backup,
to its target; a backup to another target is a diff. One daemon tracks
any number of devices (repeat --track, or "linuxagent track DEVICE").
Where the kernel offers only ftrace's blk tracer, one program on the
machine can trace at a time: run one daemon per machine.
`

func cmdDaemon(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("daemon", "daemon [--state-dir DIR] [--socket PATH] [--listen HOST:PORT] [--track DEVICE]...", daemonAbout, stderr)
	stateDir := fs.String("state-dir", envOr("LINUXAGENT_STATE_DIR", agent.DefaultStateDir), "state directory: token, change sets, running marker")
	socket := fs.String("socket", envOr("LINUXAGENT_SOCKET", DefaultSocket), "serve the API on this Unix socket")
	listen := fs.String("listen", "", "also serve the API on this loopback HOST:PORT")
	var track []string
	fs.Func("track", "track this block device (repeatable); tracked devices are remembered in STATE_DIR", func(s string) error {
		track = append(track, s)
		return nil
	})
	pos, status, ok := parse(fs, args, stdout)
	if !ok {
		return status
	}
	if len(pos) != 0 {
		fs.Usage()
		return 2
	}
	logger := log.New(stderr, "linuxagent: ", log.LstdFlags)
	if err := os.MkdirAll(*stateDir, 0o700); err != nil {
		return exitErr(stderr, err)
	}
	token, err := agentapi.LoadOrCreateToken(filepath.Join(*stateDir, "token"))
	if err != nil {
		return exitErr(stderr, err)
	}
	var listeners []net.Listener
	l, err := listenUnix(*socket)
	if err != nil {
		return exitErr(stderr, err)
	}
	listeners = append(listeners, l)
	if *listen != "" {
		host, _, err := net.SplitHostPort(*listen)
		if ip := net.ParseIP(host); err != nil || (host != "localhost" && (ip == nil || !ip.IsLoopback())) {
			return exitErr(stderr, fmt.Errorf("--listen %s: only loopback addresses; put a TLS proxy in front for remote access", *listen))
		}
		tl, err := net.Listen("tcp", *listen)
		if err != nil {
			return exitErr(stderr, err)
		}
		listeners = append(listeners, tl)
	}

	d := agent.NewDaemon(&agent.System, agent.DaemonOptions{StateDir: *stateDir, Logf: logger.Printf})
	if err := d.Start(ctx, track...); err != nil {
		for _, l := range listeners {
			l.Close()
		}
		return exitErr(stderr, err)
	}
	errc := make(chan error, len(listeners))
	for _, l := range listeners {
		logger.Printf("serving the API on %s", l.Addr())
		go func() { errc <- d.Serve(ctx, l, token) }()
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	logger.Printf("stopping")
	sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stopErr := d.Stop(sctx)
	for _, l := range listeners {
		l.Close()
	}
	os.Remove(*socket)
	if err := errors.Join(serveErr, stopErr); err != nil {
		return exitErr(stderr, err)
	}
	logger.Printf("stopped cleanly")
	return 0
}

// listenUnix listens on a Unix socket only root reaches, replacing a stale
// socket file but never a live daemon's.
func listenUnix(path string) (net.Listener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("a daemon already serves %s", path)
	}
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("status", "status [JOB_ID] [--json]", "Show the daemon's backups, newest first, or one backup in detail.", stderr)
	var df daemonFlags
	df.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, status, ok := parse(fs, args, stdout)
	if !ok {
		return status
	}
	c, err := df.client(ctx)
	if err != nil {
		return exitErr(stderr, err)
	}
	var jobs []agentapi.Job
	if len(pos) == 1 {
		job, err := c.Backup(ctx, pos[0])
		if err != nil {
			return exitErr(stderr, err)
		}
		jobs = []agentapi.Job{job}
	} else if jobs, err = c.Backups(ctx); err != nil {
		return exitErr(stderr, err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(jobs)
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tDEVICE\tTARGET\tMODE\tSTATE\tPROGRESS\tSTARTED")
	for _, j := range jobs {
		prog := fmt.Sprintf("pass %d %s %s/%s", j.Progress.Pass, j.Progress.Phase, bytesize.IEC(j.Progress.BytesDone), bytesize.IEC(j.Progress.BytesTotal))
		mode := string(j.Request.Mode)
		if j.Result != nil {
			prog = fmt.Sprintf("%s sent, frozen %v", bytesize.IEC(j.Result.BytesSent), j.Result.FreezeWindow.Round(time.Microsecond))
			mode = string(j.Result.Mode)
		}
		if j.Error != "" {
			prog = j.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.ID, j.Request.Device, j.Request.Target, mode, j.State, prog, j.Started.Format(time.DateTime))
	}
	tw.Flush()
	return 0
}

func cmdCancel(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("cancel", "cancel JOB_ID|DEVICE", "Cancel a running backup, named by its job ID or its device.", stderr)
	var df daemonFlags
	df.register(fs)
	pos, status, ok := parse(fs, args, stdout)
	if !ok {
		return status
	}
	if len(pos) != 1 {
		fs.Usage()
		return 2
	}
	c, err := df.client(ctx)
	if err != nil {
		return exitErr(stderr, err)
	}
	id := pos[0]
	if strings.HasPrefix(id, "/") {
		jobs, err := c.Backups(ctx)
		if err != nil {
			return exitErr(stderr, err)
		}
		id = ""
		for _, j := range jobs {
			if j.Request.Device == pos[0] && j.State == agentapi.Running {
				id = j.ID
			}
		}
		if id == "" {
			return exitErr(stderr, fmt.Errorf("no backup of %s is running", pos[0]))
		}
	}
	job, err := c.Cancel(ctx, id)
	if err != nil {
		return exitErr(stderr, err)
	}
	fmt.Fprintf(stdout, "cancelling backup %s of %s\n", job.ID, job.Request.Device)
	return 0
}

func cmdTrack(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return trackCommand(ctx, "track", args, stdout, stderr)
}

func cmdUntrack(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return trackCommand(ctx, "untrack", args, stdout, stderr)
}

func trackCommand(ctx context.Context, name string, args []string, stdout, stderr io.Writer) int {
	about := "Ask the daemon to start tracing DEVICE's writes; it remembers it across restarts."
	if name == "untrack" {
		about = "Ask the daemon to stop tracing DEVICE and forget its change set."
	}
	fs := newFlags(name, name+" DEVICE", about, stderr)
	var df daemonFlags
	df.register(fs)
	pos, status, ok := parse(fs, args, stdout)
	if !ok {
		return status
	}
	if len(pos) != 1 {
		fs.Usage()
		return 2
	}
	c, err := df.client(ctx)
	if err != nil {
		return exitErr(stderr, err)
	}
	pos[0] = absPath(pos[0])
	if name == "untrack" {
		if err := c.Untrack(ctx, pos[0]); err != nil {
			return exitErr(stderr, err)
		}
		fmt.Fprintf(stdout, "%s is no longer tracked\n", pos[0])
		return 0
	}
	st, err := c.Track(ctx, pos[0])
	if err != nil {
		return exitErr(stderr, err)
	}
	fmt.Fprintf(stdout, "tracking %s\n", st.Device)
	return 0
}

// deviceRow is one line of 'devices'.
type deviceRow struct {
	Device   string                 `json:"device"`
	Size     int64                  `json:"size"`
	Mounts   []string               `json:"mounts,omitempty"`
	Tracking *agentapi.DeviceStatus `json:"tracking,omitempty"`
	// MountError says why the mounts are unknown.
	MountError string `json:"mount_error,omitempty"`
}

func cmdDevices(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("devices", "devices [--json]", "List the machine's block devices with their size, mount points and, when a daemon runs, tracking state.", stderr)
	var df daemonFlags
	df.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	all := fs.Bool("all", false, "include empty loop and ram devices")
	_, status, ok := parse(fs, args, stdout)
	if !ok {
		return status
	}
	rows := map[string]*deviceRow{}
	names, _ := filepath.Glob("/sys/class/block/*")
	for _, p := range names {
		name := filepath.Base(p)
		data, err := os.ReadFile(filepath.Join(p, "size"))
		if err != nil {
			continue
		}
		sectors, _ := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
		if !*all && (sectors == 0 || strings.HasPrefix(name, "ram")) {
			continue
		}
		dev := "/dev/" + name
		r := &deviceRow{Device: dev, Size: sectors * 512}
		if agent.System.Mounts != nil {
			ms, err := agent.System.Mounts(dev)
			for _, m := range ms {
				r.Mounts = append(r.Mounts, m.MountPoint+" ("+m.FSType+")")
			}
			if err != nil {
				r.MountError = err.Error()
			}
		}
		rows[dev] = r
	}
	if c, err := df.client(ctx); err == nil {
		devs, err := c.Devices(ctx)
		if err != nil {
			return exitErr(stderr, err)
		}
		for i := range devs {
			r, ok := rows[devs[i].Device]
			if !ok {
				r = &deviceRow{Device: devs[i].Device}
				rows[devs[i].Device] = r
			}
			r.Tracking = &devs[i]
		}
	}
	list := make([]*deviceRow, 0, len(rows))
	for _, r := range rows {
		list = append(list, r)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Device < list[j].Device })
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(list)
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tSIZE\tMOUNTED\tTRACKING")
	for _, r := range list {
		track := "-"
		if t := r.Tracking; t != nil {
			switch {
			case !t.Tracking:
				track = "failed: " + t.Reason
			case !t.Complete:
				track = "incomplete: " + t.Reason
			case len(t.Targets) > 0:
				track = fmt.Sprintf("yes, %s changed since the backup to %s", bytesize.IEC(t.ChangedBytes), t.Targets[0])
			default:
				track = fmt.Sprintf("yes, %s changed (%s)", bytesize.IEC(t.ChangedBytes), t.Reason)
			}
		}
		mounted := strings.Join(r.Mounts, ", ")
		switch {
		case r.MountError != "":
			mounted = "? (" + r.MountError + ")"
		case mounted == "":
			mounted = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Device, bytesize.IEC(r.Size), mounted, track)
	}
	tw.Flush()
	return 0
}
