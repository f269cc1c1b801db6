package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"time"

	"github.com/blockimage/blockimage/examples/linuxagent/internal/agent"
	"github.com/blockimage/blockimage/examples/linuxagent/internal/agentapi"
	"github.com/blockimage/blockimage/internal/bytesize"
)

const backupAbout = `
Back up DEVICE (a block device, or an image file) to TARGET.

  full         copy the blocks the filesystem uses (all blocks when it is
               unknown), while it stays mounted and in use; re-copy what the
               tracer saw written meanwhile until little is left; then freeze,
               copy the rest and thaw. (default)
  diff         like full, but send only the in-use blocks that differ from
               what TARGET already holds.
  incremental  send only what was written since the last backup to TARGET;
               the daemon must have been tracking DEVICE since then. When
               tracking was interrupted it falls back to a diff and says so.

Full and diff run in this process unless a daemon tracks DEVICE, which
then runs them, so that its change set stays continuous. A mounted
filesystem is frozen for the last pass only (and briefly to read its
allocation maps); without tracing (not root, no tracefs, or ftrace in use
by another program, such as a daemon tracing another device) a mounted
device is mapped and copied inside a single freeze, which lasts the whole
copy (at most 10 minutes).

TARGET is nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, or a
local image file, created sparse and served through the embedded NBD
server. A frozen ext4 image needs its journal replayed to mount read-write;
for a read-only look: mount -o ro,noload (ext4), -o ro,norecovery (XFS).
While the source XFS is mounted, add nouuid: XFS refuses a second mount of
the same UUID.

Example:
  sudo linuxagent backup /dev/sdb1 --to /backup/sdb1.img
`

func cmdBackup(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("backup", "backup DEVICE --to TARGET [--mode full|diff|incremental] [--rate-limit BYTES/s] [--json]", backupAbout, stderr)
	var df daemonFlags
	df.register(fs)
	to := fs.String("to", "", "the target: an NBD URI or a local image file (required)")
	mode := fs.String("mode", "full", "full, diff or incremental")
	rate := fs.String("rate-limit", "0", "cap the device reads at this many bytes per second (50M, 1G); 0: no cap")
	asJSON := fs.Bool("json", false, "print the result as JSON, and no progress")
	local := fs.Bool("local", false, "run here even if a daemon tracks the device (full and diff only)")
	pos, status, ok := parse(fs, args, stdout)
	if !ok {
		return status
	}
	if len(pos) != 1 || *to == "" {
		fmt.Fprintln(stderr, "linuxagent backup: need one DEVICE and --to TARGET")
		fs.Usage()
		return 2
	}
	limit, err := parseRate(*rate)
	if err != nil {
		fmt.Fprintf(stderr, "linuxagent backup: %v\n", err)
		return 2
	}
	// The daemon has a working directory of its own: send it absolute paths.
	req := agentapi.BackupRequest{Device: absPath(pos[0]), Target: *to, Mode: agentapi.Mode(*mode), RateLimit: limit}
	if !agent.IsNBDURI(req.Target) {
		req.Target = absPath(req.Target)
	}
	if !req.Mode.Valid() {
		fmt.Fprintf(stderr, "linuxagent backup: unknown mode %q: want full, diff or incremental\n", *mode)
		return 2
	}
	out := newReporter(stderr, !*asJSON)

	// A daemon that tracks the device runs every backup of it: two
	// tracers on one device would compete, and its set must see them.
	var res agentapi.Result
	c, cerr := df.client(ctx)
	viaDaemon := cerr == nil && !*local && tracks(ctx, c, req.Device)
	switch {
	case req.Mode == agentapi.Incremental && cerr != nil:
		return exitErr(stderr, fmt.Errorf("an incremental backup needs the daemon, which tracks the device between backups: %w", cerr))
	case req.Mode == agentapi.Incremental || viaDaemon:
		res, err = backupViaDaemon(ctx, c, req, out)
	default:
		res, err = agent.System.Run(ctx, agent.Backup{Request: req, Progress: out.progress, Notify: out.note})
	}
	if err != nil {
		return exitErr(stderr, err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(res)
		return 0
	}
	printResult(stdout, req, res)
	return 0
}

func absPath(p string) string {
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return p
}

func tracks(ctx context.Context, c *agentapi.Client, device string) bool {
	devs, err := c.Devices(ctx)
	if err != nil {
		return false
	}
	for _, d := range devs {
		if d.Device == device {
			return true
		}
	}
	return false
}

// backupViaDaemon starts the backup in the daemon and follows it; an
// interrupt cancels it there too.
func backupViaDaemon(ctx context.Context, c *agentapi.Client, req agentapi.BackupRequest, out *reporter) (agentapi.Result, error) {
	job, err := c.StartBackup(ctx, req)
	if err != nil {
		return agentapi.Result{}, err
	}
	out.line("daemon started backup %s", job.ID)
	job, err = c.Wait(ctx, job.ID, 500*time.Millisecond, func(j agentapi.Job) { out.progress(j.Progress) })
	if err != nil {
		if ctx.Err() != nil {
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, _ = c.Cancel(cctx, job.ID)
			cancel()
		}
		return agentapi.Result{}, err
	}
	if job.State != agentapi.Succeeded || job.Result == nil {
		return agentapi.Result{}, fmt.Errorf("backup %s %s: %s", job.ID, job.State, job.Error)
	}
	for _, n := range job.Result.Notes {
		out.note(n)
	}
	return *job.Result, nil
}

func printResult(w io.Writer, req agentapi.BackupRequest, r agentapi.Result) {
	mode := string(r.Mode)
	if r.FallbackReason != "" {
		mode += " (instead of " + string(req.Mode) + ": " + r.FallbackReason + ")"
	}
	fs := r.Filesystem
	if fs == "" {
		fs = "unknown filesystem"
	}
	fmt.Fprintf(w, "backup of %s to %s: %s\n", req.Device, req.Target, mode)
	if r.Mode != agentapi.Incremental {
		fmt.Fprintf(w, "  %s, %s in use\n", fs, bytesize.IEC(r.BytesInUse))
	}
	conv := "converged"
	if !r.Converged {
		conv = "did not converge, froze anyway"
	}
	fmt.Fprintf(w, "  %d passes (%s), %s sent\n", r.Passes, conv, bytesize.IEC(r.BytesSent))
	switch {
	case r.Frozen && r.MapFreezeWindow > 0:
		fmt.Fprintf(w, "  frozen for %v (and %v to read the allocation maps)\n", r.FreezeWindow.Round(time.Microsecond), r.MapFreezeWindow.Round(time.Microsecond))
	case r.Frozen:
		fmt.Fprintf(w, "  frozen for %v\n", r.FreezeWindow.Round(time.Microsecond))
	case r.Consistent:
		fmt.Fprintln(w, "  not mounted: copied without a freeze")
	}
	if !r.Consistent {
		fmt.Fprintln(w, "  WARNING: the image is not consistent")
	}
}

// reporter prints progress to stderr, at most once a second and at every
// phase change, and the notes as they come.
type reporter struct {
	mu      sync.Mutex
	w       io.Writer
	enabled bool
	last    time.Time
	phase   string
	notes   map[string]bool
}

func newReporter(w io.Writer, enabled bool) *reporter {
	return &reporter{w: w, enabled: enabled, notes: map[string]bool{}}
}

func (r *reporter) progress(p agentapi.Progress) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.enabled || p.Phase == "" || (p.Phase == r.phase && time.Since(r.last) < time.Second) {
		return
	}
	r.phase, r.last = p.Phase, time.Now()
	switch p.Phase {
	case "mapping", "done":
		fmt.Fprintf(r.w, "%s\n", p.Phase)
	default:
		fmt.Fprintf(r.w, "pass %d %s: %s of %s, %s sent in all\n", p.Pass, p.Phase, bytesize.IEC(p.BytesDone), bytesize.IEC(p.BytesTotal), bytesize.IEC(p.BytesSent))
	}
}

func (r *reporter) note(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.notes[s] {
		return
	}
	r.notes[s] = true
	fmt.Fprintf(r.w, "note: %s\n", s)
}

func (r *reporter) line(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.enabled {
		fmt.Fprintf(r.w, format+"\n", args...)
	}
}

const restoreAbout = `
Copy the backup image at TARGET (an NBD URI or a local image file) to
DEVICE_OR_FILE: a block device, which must not be mounted, or a file,
created sparse. An existing non-empty file is replaced only with --force.

Example:
  sudo linuxagent restore --from /backup/sdb1.img /dev/sdc1
`

func cmdRestore(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlags("restore", "restore --from TARGET DEVICE_OR_FILE [--force] [--quiet]", restoreAbout, stderr)
	from := fs.String("from", "", "the backup image: an NBD URI or a local file (required)")
	force := fs.Bool("force", false, "overwrite an existing non-empty file")
	quiet := fs.Bool("quiet", false, "no progress")
	pos, status, ok := parse(fs, args, stdout)
	if !ok {
		return status
	}
	if len(pos) != 1 || *from == "" {
		fmt.Fprintln(stderr, "linuxagent restore: need --from TARGET and one DEVICE_OR_FILE")
		fs.Usage()
		return 2
	}
	var last time.Time
	res, err := agent.System.Restore(ctx, *from, pos[0], agent.RestoreOptions{Force: *force, Progress: func(done, total int64) {
		if !*quiet && (time.Since(last) >= time.Second || done == total) {
			last = time.Now()
			fmt.Fprintf(stderr, "restored %s of %s\n", bytesize.IEC(done), bytesize.IEC(total))
		}
	}})
	if err != nil {
		return exitErr(stderr, err)
	}
	fmt.Fprintf(stdout, "restored %s (%s written) from %s to %s\n", bytesize.IEC(res.Size), bytesize.IEC(res.Written), *from, pos[0])
	return 0
}
