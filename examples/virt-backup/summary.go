package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// summary is what a run prints: as JSON with --json, as text otherwise.
type summary struct {
	Command     string         `json:"command"`
	OK          bool           `json:"ok"`
	Error       string         `json:"error,omitempty"`
	Source      string         `json:"source,omitempty"`
	Destination string         `json:"destination,omitempty"`
	Domains     []domainResult `json:"domains"`
}

type domainResult struct {
	Name string `json:"name"`
	OK   bool   `json:"ok"`
	// Error says why the domain failed.
	Error string `json:"error,omitempty"`
	// Running: the domain was running at backup time (its memory saved).
	Running bool `json:"running"`
	// DowntimeSeconds is how long a running guest was stopped by backup:
	// from the start of the save to the end of the restore.
	DowntimeSeconds float64 `json:"downtime_seconds,omitempty"`
	// SaveSeconds is the part of the downtime spent saving memory.
	SaveSeconds float64 `json:"save_seconds,omitempty"`
	// State is the domain's state when the command finished.
	State    string       `json:"state,omitempty"`
	Disks    []diskResult `json:"disks,omitempty"`
	Warnings []string     `json:"warnings,omitempty"`
}

type diskResult struct {
	Target string `json:"target"`
	Source string `json:"source,omitempty"`
	// File is the stored file (backup, verify) or the restored image.
	File        string `json:"file"`
	Size        int64  `json:"size"`
	DataBytes   int64  `json:"data_bytes"`
	StoredBytes int64  `json:"stored_bytes,omitempty"`
	SHA256      string `json:"sha256"`
	Flattened   bool   `json:"flattened,omitempty"`
}

// finish prints s and returns the exit code.
func (s *summary) finish(w io.Writer, asJSON bool, fatal bool) int {
	s.OK = !fatal && s.Error == ""
	if s.Domains == nil {
		// [] rather than null: JSON readers iterate over it.
		s.Domains = []domainResult{}
	}
	for _, d := range s.Domains {
		if !d.OK {
			s.OK = false
		}
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s)
	} else {
		s.text(w)
	}
	switch {
	case fatal:
		return exitFatal
	case !s.OK:
		return exitFailed
	}
	return exitOK
}

func (s *summary) text(w io.Writer) {
	if s.Error != "" {
		fmt.Fprintf(w, "virt-backup %s: %s\n", s.Command, s.Error)
	}
	for _, d := range s.Domains {
		status := "ok"
		if !d.OK {
			status = "FAILED: " + d.Error
		}
		fmt.Fprintf(w, "%s: %s\n", d.Name, status)
		if d.Running && d.DowntimeSeconds > 0 {
			fmt.Fprintf(w, "  downtime %.2fs (save %.2fs)\n", d.DowntimeSeconds, d.SaveSeconds)
		}
		if d.State != "" {
			fmt.Fprintf(w, "  state %s\n", d.State)
		}
		for _, k := range d.Disks {
			fmt.Fprintf(w, "  %s %s: %s, %s data", k.Target, k.File, human(k.Size), human(k.DataBytes))
			if k.StoredBytes > 0 {
				fmt.Fprintf(w, ", %s stored", human(k.StoredBytes))
			}
			fmt.Fprintln(w)
		}
		for _, m := range d.Warnings {
			fmt.Fprintf(w, "  warning: %s\n", m)
		}
	}
	n, failed := len(s.Domains), 0
	var names []string
	for _, d := range s.Domains {
		if !d.OK {
			failed++
			names = append(names, d.Name)
		}
	}
	if failed > 0 {
		fmt.Fprintf(w, "%d of %d domains failed: %s\n", failed, n, strings.Join(names, ", "))
	} else if s.Error == "" {
		fmt.Fprintf(w, "%d domains: all ok\n", n)
	}
}
