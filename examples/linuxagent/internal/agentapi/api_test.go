package agentapi

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

type fakeTracking struct {
	mu      sync.Mutex
	tracked map[string]bool
}

func (f *fakeTracking) Devices() []DeviceStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []DeviceStatus
	for d := range f.tracked {
		out = append(out, DeviceStatus{Device: d, Tracking: true, Complete: true})
	}
	return out
}

func (f *fakeTracking) Track(d string) (DeviceStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tracked[d] = true
	return DeviceStatus{Device: d, Tracking: true, Complete: true}, nil
}

func (f *fakeTracking) Untrack(d string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.tracked[d] {
		return ErrNotFound
	}
	delete(f.tracked, d)
	return nil
}

// serve starts the API on a Unix socket, as the daemon does, and returns a
// client with the right token.
func serve(t *testing.T, run RunFunc) (*Client, *Manager, string) {
	t.Helper()
	m := NewManager(run)
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: NewHandler(m, &fakeTracking{tracked: map[string]bool{}}, "s3cret")}
	go srv.Serve(l)
	t.Cleanup(func() {
		m.Close(context.Background())
		srv.Close()
	})
	return NewClient("unix:"+sock, "s3cret"), m, "unix:" + sock
}

// blockingRun reports progress and waits for cancellation or release.
func blockingRun(started chan<- struct{}, release <-chan struct{}) RunFunc {
	return func(ctx context.Context, req BackupRequest, progress func(Progress)) (Result, error) {
		progress(Progress{Phase: "copying", Pass: 1, BytesTotal: 100, BytesDone: 40})
		started <- struct{}{}
		select {
		case <-ctx.Done():
			return Result{}, ctx.Err()
		case <-release:
			return Result{Mode: req.Mode, Consistent: true, Passes: 2, Converged: true, BytesSent: 100}, nil
		}
	}
}

func TestTokenIsRequired(t *testing.T) {
	_, _, addr := serve(t, blockingRun(make(chan struct{}, 1), nil))
	for _, tok := range []string{"", "wrong", "s3cre", "s3cret2"} {
		_, err := NewClient(addr, tok).Backups(context.Background())
		var se *StatusError
		if !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
			t.Errorf("token %q: err %v, want 401", tok, err)
		}
	}
}

func TestBackupProgressCancelAndLast(t *testing.T) {
	started := make(chan struct{}, 1)
	c, _, _ := serve(t, blockingRun(started, make(chan struct{})))
	ctx := context.Background()
	job, err := c.StartBackup(ctx, BackupRequest{Device: "/dev/loop9", Target: "nbd://127.0.0.1:1/x", Mode: Incremental})
	if err != nil {
		t.Fatal(err)
	}
	<-started
	got, err := c.Backup(ctx, job.ID)
	if err != nil || got.State != Running || got.Progress.BytesDone != 40 || got.Progress.Phase != "copying" {
		t.Fatalf("running job = %+v, %v", got, err)
	}
	if _, err := c.StartBackup(ctx, BackupRequest{Device: "/dev/loop9", Target: "x"}); !errors.Is(err, ErrBusy) {
		t.Fatalf("second backup of a busy device: %v, want ErrBusy", err)
	}
	if _, err := c.LastBackup(ctx, "/dev/loop9"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("last backup before any finished: %v, want ErrNotFound", err)
	}
	if _, err := c.Cancel(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	final, err := c.Wait(ctx, job.ID, 5*time.Millisecond, nil)
	if err != nil || final.State != Cancelled || final.Finished == nil || final.Result != nil {
		t.Fatalf("cancelled job = %+v, %v", final, err)
	}
	last, err := c.LastBackup(ctx, "/dev/loop9")
	if err != nil || last.ID != job.ID {
		t.Fatalf("last = %+v, %v; want job %s", last, err, job.ID)
	}
}

func TestBackupSucceedsWithResult(t *testing.T) {
	started, release := make(chan struct{}, 1), make(chan struct{})
	c, _, _ := serve(t, blockingRun(started, release))
	ctx := context.Background()
	job, err := c.StartBackup(ctx, BackupRequest{Device: "/dev/loop8", Target: "img", Mode: Diff})
	if err != nil {
		t.Fatal(err)
	}
	<-started
	close(release)
	final, err := c.Wait(ctx, job.ID, 5*time.Millisecond, nil)
	if err != nil || final.State != Succeeded || final.Result == nil || final.Result.Mode != Diff || !final.Result.Consistent {
		t.Fatalf("finished job = %+v, %v", final, err)
	}
	jobs, err := c.Backups(ctx)
	if err != nil || len(jobs) != 1 || jobs[0].ID != job.ID {
		t.Fatalf("Backups = %+v, %v", jobs, err)
	}
}

func TestInvalidRequests(t *testing.T) {
	c, _, _ := serve(t, blockingRun(make(chan struct{}, 1), nil))
	ctx := context.Background()
	for _, req := range []BackupRequest{
		{Device: "", Target: "x"},
		{Device: "/dev/x", Target: ""},
		{Device: "/dev/x", Target: "y", Mode: "snapshot"},
		{Device: "/dev/x", Target: "y", RateLimit: -1},
	} {
		if _, err := c.StartBackup(ctx, req); !errors.Is(err, ErrInvalid) {
			t.Errorf("StartBackup(%+v) = %v, want ErrInvalid", req, err)
		}
	}
	if _, err := c.Backup(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown job: %v, want ErrNotFound", err)
	}
}

func TestPanickingBackupFailsTheJobOnly(t *testing.T) {
	c, _, _ := serve(t, func(ctx context.Context, req BackupRequest, progress func(Progress)) (Result, error) {
		panic("disk on fire")
	})
	ctx := context.Background()
	job, err := c.StartBackup(ctx, BackupRequest{Device: "/dev/loop7", Target: "t"})
	if err != nil {
		t.Fatal(err)
	}
	final, err := c.Wait(ctx, job.ID, 5*time.Millisecond, nil)
	if err != nil || final.State != Failed || final.Error == "" {
		t.Fatalf("panicking job = %+v, %v", final, err)
	}
	// The daemon still serves, and the device is free again.
	if _, err := c.StartBackup(ctx, BackupRequest{Device: "/dev/loop7", Target: "t"}); err != nil {
		t.Fatalf("after a panic: %v", err)
	}
}

func TestTracking(t *testing.T) {
	c, _, _ := serve(t, blockingRun(make(chan struct{}, 1), nil))
	ctx := context.Background()
	if _, err := c.Track(ctx, "/dev/loop3"); err != nil {
		t.Fatal(err)
	}
	devs, err := c.Devices(ctx)
	if err != nil || len(devs) != 1 || devs[0].Device != "/dev/loop3" || !devs[0].Tracking {
		t.Fatalf("Devices = %+v, %v", devs, err)
	}
	if err := c.Untrack(ctx, "/dev/loop3"); err != nil {
		t.Fatal(err)
	}
	if err := c.Untrack(ctx, "/dev/loop3"); err == nil {
		t.Fatal("untracking an untracked device succeeded")
	}
}

func TestCloseCancelsRunningBackups(t *testing.T) {
	started := make(chan struct{}, 1)
	m := NewManager(blockingRun(started, make(chan struct{})))
	job, err := m.Start(BackupRequest{Device: "d", Target: "t"})
	if err != nil {
		t.Fatal(err)
	}
	<-started
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.Get(job.ID); got.State != Cancelled {
		t.Fatalf("after Close the job is %s, want cancelled", got.State)
	}
	if _, err := m.Start(BackupRequest{Device: "d", Target: "t"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Close = %v, want ErrClosed", err)
	}
}

func TestTokenFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	tok, err := LoadOrCreateToken(path)
	if err != nil || len(tok) != 64 {
		t.Fatalf("new token %q, %v", tok, err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v, %v; want 0600", st.Mode().Perm(), err)
	}
	again, err := LoadOrCreateToken(path)
	if err != nil || again != tok {
		t.Fatalf("reloaded token %q, %v; want %q", again, err, tok)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadToken(path); err == nil {
		t.Fatal("a world-readable token file was accepted")
	}
}

// TestOpenAPIListsEveryRoute keeps examples/linuxagent/openapi.yaml in step
// with the handler.
func TestOpenAPIListsEveryRoute(t *testing.T) {
	spec, err := os.ReadFile(filepath.Join("..", "..", "openapi.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	routes := map[string][]string{
		"/v1/backups:":             {"get:", "post:"},
		"/v1/backups/last:":        {"get:"},
		"/v1/backups/{id}:":        {"get:"},
		"/v1/backups/{id}/cancel:": {"post:"},
		"/v1/devices:":             {"get:"},
		"/v1/devices/track:":       {"post:"},
		"/v1/devices/untrack:":     {"post:"},
	}
	text := string(spec)
	for path, methods := range routes {
		i := strings.Index(text, "\n  "+path+"\n")
		if i < 0 {
			t.Errorf("openapi.yaml lacks %s", path)
			continue
		}
		section := text[i+len(path)+3:] // from the newline ending the path line
		if j := strings.Index(section, "\n  /"); j >= 0 {
			section = section[:j]
		}
		for _, m := range methods {
			if !strings.Contains(section, "\n    "+m) {
				t.Errorf("openapi.yaml lacks %s %s", m, path)
			}
		}
	}
	if n := strings.Count(text, "\n  /v1/"); n != len(routes) {
		t.Errorf("openapi.yaml has %d paths, the handler %d", n, len(routes))
	}
}
