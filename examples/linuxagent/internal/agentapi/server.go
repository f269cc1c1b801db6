package agentapi

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
)

// DeviceStatus is what the daemon knows of a device it tracks.
type DeviceStatus struct {
	Device string `json:"device"`
	// Tracking is true while the tracer records the device's writes.
	Tracking bool `json:"tracking"`
	// Complete is false when events may have been lost since the last
	// backup; the next incremental then falls back to a diff.
	Complete bool `json:"complete"`
	// Reason says why tracking is incomplete.
	Reason string `json:"reason,omitempty"`
	// ChangedBytes is how much the tracer has seen written since the last
	// backup.
	ChangedBytes int64 `json:"changed_bytes"`
	// Targets lists the targets with a backup the tracer can continue from.
	Targets []string `json:"targets,omitempty"`
}

// Tracking is what the daemon does with tracers; the handler calls it for
// the /v1/devices endpoints.
type Tracking interface {
	Devices() []DeviceStatus
	Track(device string) (DeviceStatus, error)
	Untrack(device string) error
}

// Handler serves the API for a manager and a tracking service. Every
// request must carry token as a bearer token.
type Handler struct {
	jobs     *Manager
	tracking Tracking
	token    []byte
	mux      *http.ServeMux
}

// NewHandler returns the API handler.
func NewHandler(jobs *Manager, tracking Tracking, token string) *Handler {
	h := &Handler{jobs: jobs, tracking: tracking, token: []byte(token), mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /v1/backups", h.listBackups)
	h.mux.HandleFunc("POST /v1/backups", h.startBackup)
	h.mux.HandleFunc("GET /v1/backups/last", h.lastBackup)
	h.mux.HandleFunc("GET /v1/backups/{id}", h.getBackup)
	h.mux.HandleFunc("POST /v1/backups/{id}/cancel", h.cancelBackup)
	h.mux.HandleFunc("GET /v1/devices", h.listDevices)
	h.mux.HandleFunc("POST /v1/devices/track", h.track)
	h.mux.HandleFunc("POST /v1/devices/untrack", h.untrack)
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	auth, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || len(h.token) == 0 || subtle.ConstantTimeCompare([]byte(auth), h.token) != 1 {
		writeError(w, http.StatusUnauthorized, errors.New("agentapi: missing or wrong token"))
		return
	}
	h.mux.ServeHTTP(w, r)
}

func (h *Handler) listBackups(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.jobs.List())
}

func (h *Handler) startBackup(w http.ResponseWriter, r *http.Request) {
	var req BackupRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, errors.Join(ErrInvalid, err))
		return
	}
	job, err := h.jobs.Start(req)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusAccepted, job)
}

func (h *Handler) getBackup(w http.ResponseWriter, r *http.Request) {
	job, err := h.jobs.Get(r.PathValue("id"))
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, job)
}

func (h *Handler) lastBackup(w http.ResponseWriter, r *http.Request) {
	job, err := h.jobs.Last(r.URL.Query().Get("device"))
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, job)
}

func (h *Handler) cancelBackup(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := h.jobs.Cancel(id); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	job, err := h.jobs.Get(id)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusAccepted, job)
}

type deviceRequest struct {
	Device string `json:"device"`
}

func (h *Handler) listDevices(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.tracking.Devices())
}

func (h *Handler) track(w http.ResponseWriter, r *http.Request) {
	var req deviceRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<12)).Decode(&req); err != nil || req.Device == "" {
		writeError(w, http.StatusBadRequest, errors.Join(ErrInvalid, errors.New("need a device"), err))
		return
	}
	st, err := h.tracking.Track(req.Device)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (h *Handler) untrack(w http.ResponseWriter, r *http.Request) {
	var req deviceRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<12)).Decode(&req); err != nil || req.Device == "" {
		writeError(w, http.StatusBadRequest, errors.Join(ErrInvalid, errors.New("need a device"), err))
		return
	}
	if err := h.tracking.Untrack(req.Device); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrBusy):
		return http.StatusConflict
	case errors.Is(err, ErrClosed):
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// apiError is the body of every error response.
type apiError struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, apiError{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away; nothing to do
}
