package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client talks to a daemon's API.
type Client struct {
	http  *http.Client
	base  string
	token string
}

// NewClient returns a client for the API at addr: "unix:PATH" for a Unix
// socket, or "HOST:PORT".
func NewClient(addr, token string) *Client {
	tr := &http.Transport{}
	base := "http://" + addr
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
		base = "http://linuxagent"
	}
	return &Client{http: &http.Client{Transport: tr, Timeout: time.Minute}, base: base, token: token}
}

// StartBackup asks the daemon to start a backup and returns the new job.
func (c *Client) StartBackup(ctx context.Context, req BackupRequest) (Job, error) {
	var job Job
	return job, c.do(ctx, http.MethodPost, "/v1/backups", req, &job)
}

// Backup returns the job with id.
func (c *Client) Backup(ctx context.Context, id string) (Job, error) {
	var job Job
	return job, c.do(ctx, http.MethodGet, "/v1/backups/"+url.PathEscape(id), nil, &job)
}

// Backups returns every job the daemon knows, newest first.
func (c *Client) Backups(ctx context.Context) ([]Job, error) {
	var jobs []Job
	return jobs, c.do(ctx, http.MethodGet, "/v1/backups", nil, &jobs)
}

// LastBackup returns the newest finished job of device.
func (c *Client) LastBackup(ctx context.Context, device string) (Job, error) {
	var job Job
	return job, c.do(ctx, http.MethodGet, "/v1/backups/last?device="+url.QueryEscape(device), nil, &job)
}

// Cancel asks the daemon to stop the job with id.
func (c *Client) Cancel(ctx context.Context, id string) (Job, error) {
	var job Job
	return job, c.do(ctx, http.MethodPost, "/v1/backups/"+url.PathEscape(id)+"/cancel", nil, &job)
}

// Devices returns the devices the daemon tracks.
func (c *Client) Devices(ctx context.Context) ([]DeviceStatus, error) {
	var devs []DeviceStatus
	return devs, c.do(ctx, http.MethodGet, "/v1/devices", nil, &devs)
}

// Track asks the daemon to start tracking device.
func (c *Client) Track(ctx context.Context, device string) (DeviceStatus, error) {
	var st DeviceStatus
	return st, c.do(ctx, http.MethodPost, "/v1/devices/track", deviceRequest{device}, &st)
}

// Untrack asks the daemon to stop tracking device.
func (c *Client) Untrack(ctx context.Context, device string) error {
	return c.do(ctx, http.MethodPost, "/v1/devices/untrack", deviceRequest{device}, nil)
}

// Wait polls the job with id until it finishes or ctx ends, calling
// progress with each poll's job.
func (c *Client) Wait(ctx context.Context, id string, every time.Duration, progress func(Job)) (Job, error) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		job, err := c.Backup(ctx, id)
		if err != nil {
			return job, err
		}
		if progress != nil {
			progress(job)
		}
		if job.State != Running {
			return job, nil
		}
		select {
		case <-ctx.Done():
			return job, ctx.Err()
		case <-t.C:
		}
	}
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("agentapi: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("agentapi: %s %s: reading response: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var e apiError
		_ = json.Unmarshal(data, &e)
		if e.Error == "" {
			e.Error = strings.TrimSpace(string(data))
		}
		return &StatusError{Code: resp.StatusCode, Message: e.Error}
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("agentapi: %s %s: decoding response: %w", method, path, err)
	}
	return nil
}

// StatusError is a non-success answer from the daemon. errors.Is matches
// it against ErrInvalid, ErrNotFound, ErrBusy and ErrClosed by status code.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("daemon answered %d %s: %s", e.Code, http.StatusText(e.Code), e.Message)
}

// Is maps status codes back to the manager's sentinel errors.
func (e *StatusError) Is(target error) bool {
	switch target {
	case ErrInvalid:
		return e.Code == http.StatusBadRequest
	case ErrNotFound:
		return e.Code == http.StatusNotFound
	case ErrBusy:
		return e.Code == http.StatusConflict
	case ErrClosed:
		return e.Code == http.StatusServiceUnavailable
	}
	return false
}
