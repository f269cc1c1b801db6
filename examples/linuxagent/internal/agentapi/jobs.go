package agentapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Mode is the kind of backup.
type Mode string

// The backup modes.
const (
	// Full copies every in-use block.
	Full Mode = "full"
	// Diff copies the in-use blocks that differ from the target.
	Diff Mode = "diff"
	// Incremental copies the blocks the tracer saw written since the last
	// backup to the same target.
	Incremental Mode = "incremental"
)

// Valid reports whether m is one of the modes.
func (m Mode) Valid() bool { return m == Full || m == Diff || m == Incremental }

// BackupRequest asks for a backup of Device to Target.
type BackupRequest struct {
	// Device is the block device or image file to back up.
	Device string `json:"device"`
	// Target is an NBD URI (nbd://host:port/export, nbd+unix:///export?socket=PATH)
	// or a local image path.
	Target string `json:"target"`
	// Mode is full, diff or incremental. Default full.
	Mode Mode `json:"mode,omitempty"`
	// RateLimit caps the read rate in bytes per second; 0 means no limit.
	RateLimit int64 `json:"rate_limit,omitempty"`
}

// Progress is what a running backup reports.
type Progress struct {
	// Phase names the step: "mapping", "copying", "converging",
	// "frozen", "flushing", "done".
	Phase string `json:"phase"`
	// Pass counts the copy passes, starting at 1.
	Pass int `json:"pass"`
	// BytesTotal is what this pass must copy; BytesDone what it copied.
	BytesTotal int64 `json:"bytes_total"`
	BytesDone  int64 `json:"bytes_done"`
	// BytesSent counts every byte written to the target so far, all passes.
	BytesSent int64 `json:"bytes_sent"`
}

// Result is what a finished backup reports.
type Result struct {
	// Mode is the mode that ran, which differs from the request when an
	// incremental fell back to a diff.
	Mode Mode `json:"mode"`
	// FallbackReason says why the mode differs from the request.
	FallbackReason string `json:"fallback_reason,omitempty"`
	// Consistent is true when the image was completed inside a freeze
	// (or the device was not mounted).
	Consistent bool `json:"consistent"`
	// Frozen is true when a mounted filesystem was frozen for the last
	// pass; FreezeWindow is how long it stayed frozen.
	Frozen       bool          `json:"frozen"`
	FreezeWindow time.Duration `json:"freeze_window_ns"`
	// MapFreezeWindow is how long the filesystem stayed frozen while its
	// allocation maps were read, before the copy.
	MapFreezeWindow time.Duration `json:"map_freeze_window_ns,omitempty"`
	// Passes is how many copy passes ran; Converged is false when the
	// writes did not converge and the agent froze anyway.
	Passes    int  `json:"passes"`
	Converged bool `json:"converged"`
	// BytesSent is what was written to the target.
	BytesSent int64 `json:"bytes_sent"`
	// BytesInUse is what the filesystem uses.
	BytesInUse int64 `json:"bytes_in_use"`
	// Filesystem is the type found on the device, "" when unknown.
	Filesystem string `json:"filesystem,omitempty"`
	// Notes are what the user should know about this backup: a fallback
	// to all blocks, a missing tracer, writes that did not converge.
	Notes []string `json:"notes,omitempty"`
}

// State is a job's lifecycle state.
type State string

// Job states.
const (
	Running   State = "running"
	Succeeded State = "succeeded"
	Failed    State = "failed"
	Cancelled State = "cancelled"
)

// Job is a backup's status as the API reports it.
type Job struct {
	ID       string        `json:"id"`
	Request  BackupRequest `json:"request"`
	State    State         `json:"state"`
	Progress Progress      `json:"progress"`
	Result   *Result       `json:"result,omitempty"`
	Error    string        `json:"error,omitempty"`
	Started  time.Time     `json:"started"`
	Finished *time.Time    `json:"finished,omitempty"`
}

// RunFunc performs a backup. It calls progress as it goes and returns when
// the backup is done, failed or ctx is cancelled.
type RunFunc func(ctx context.Context, req BackupRequest, progress func(Progress)) (Result, error)

// Errors the manager returns; the HTTP layer maps them to status codes.
var (
	ErrBusy     = errors.New("agentapi: a backup of this device is already running")
	ErrNotFound = errors.New("agentapi: no such backup")
	ErrInvalid  = errors.New("agentapi: invalid request")
	ErrClosed   = errors.New("agentapi: the daemon is shutting down")
)

// Manager runs backups, one per device at a time, and remembers the last
// result of each device.
type Manager struct {
	run RunFunc

	mu      sync.Mutex
	closed  bool
	jobs    map[string]*jobEntry
	running map[string]string // device -> job id
	last    map[string]string // device -> job id of the newest finished job
	wg      sync.WaitGroup
}

type jobEntry struct {
	job    Job
	cancel context.CancelFunc
	done   chan struct{}
}

// NewManager returns a manager that performs backups with run.
func NewManager(run RunFunc) *Manager {
	return &Manager{run: run, jobs: map[string]*jobEntry{}, running: map[string]string{}, last: map[string]string{}}
}

// Start validates req and starts the backup in the background.
func (m *Manager) Start(req BackupRequest) (Job, error) {
	if req.Mode == "" {
		req.Mode = Full
	}
	if req.Device == "" || req.Target == "" || !req.Mode.Valid() || req.RateLimit < 0 {
		return Job{}, fmt.Errorf("%w: need device, target and mode full, diff or incremental", ErrInvalid)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return Job{}, ErrClosed
	}
	if id, busy := m.running[req.Device]; busy {
		return Job{}, fmt.Errorf("%w: %s (backup %s)", ErrBusy, req.Device, id)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &jobEntry{job: Job{ID: newID(), Request: req, State: Running, Started: time.Now()}, cancel: cancel, done: make(chan struct{})}
	m.jobs[e.job.ID] = e
	m.running[req.Device] = e.job.ID
	m.wg.Add(1)
	go m.execute(ctx, e)
	return e.job, nil
}

func (m *Manager) execute(ctx context.Context, e *jobEntry) {
	defer m.wg.Done()
	defer close(e.done)
	res, err := m.runSafely(ctx, e)
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	e.job.Finished = &now
	switch {
	case err == nil:
		e.job.State = Succeeded
		e.job.Result = &res
	case ctx.Err() != nil:
		e.job.State = Cancelled
		e.job.Error = err.Error()
	default:
		e.job.State = Failed
		e.job.Error = err.Error()
	}
	delete(m.running, e.job.Request.Device)
	m.last[e.job.Request.Device] = e.job.ID
	e.cancel()
}

// runSafely turns a panic in a backup into a failed job, so the daemon,
// which owns the tracing of every device, survives it.
func (m *Manager) runSafely(ctx context.Context, e *jobEntry) (res Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("agentapi: backup panicked: %v", p)
		}
	}()
	return m.run(ctx, e.job.Request, func(p Progress) {
		m.mu.Lock()
		e.job.Progress = p
		m.mu.Unlock()
	})
}

// Get returns the job with id.
func (m *Manager) Get(id string) (Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.jobs[id]
	if !ok {
		return Job{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return e.job, nil
}

// Wait blocks until the job with id has finished or ctx is done.
func (m *Manager) Wait(ctx context.Context, id string) (Job, error) {
	m.mu.Lock()
	e, ok := m.jobs[id]
	m.mu.Unlock()
	if !ok {
		return Job{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	select {
	case <-e.done:
		return m.Get(id)
	case <-ctx.Done():
		return Job{}, ctx.Err()
	}
}

// Cancel asks the job with id to stop; it returns at once. A finished job
// is left as it is.
func (m *Manager) Cancel(id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.jobs[id]
	if !ok {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	e.cancel()
	return nil
}

// Last returns the newest finished job of device.
func (m *Manager) Last(device string) (Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	id, ok := m.last[device]
	if !ok {
		return Job{}, fmt.Errorf("%w: no finished backup of %s", ErrNotFound, device)
	}
	return m.jobs[id].job, nil
}

// List returns every job the manager knows, newest first.
func (m *Manager) List() []Job {
	m.mu.Lock()
	defer m.mu.Unlock()
	jobs := make([]Job, 0, len(m.jobs))
	for _, e := range m.jobs {
		jobs = append(jobs, e.job)
	}
	for i := 1; i < len(jobs); i++ {
		for j := i; j > 0 && jobs[j].Started.After(jobs[j-1].Started); j-- {
			jobs[j], jobs[j-1] = jobs[j-1], jobs[j]
		}
	}
	return jobs
}

// Close refuses new backups, cancels the running ones and waits for them
// to stop or ctx to end.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	m.closed = true
	for _, id := range m.running {
		m.jobs[id].cancel()
	}
	m.mu.Unlock()
	done := make(chan struct{})
	go func() { m.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func newID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("agentapi: no randomness: " + err.Error()) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b[:])
}
