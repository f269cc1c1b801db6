package agent

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// stateKey names a device's state files: its path with the slashes
// replaced, which stays readable in a listing.
func stateKey(device string) string {
	return strings.ReplaceAll(strings.TrimPrefix(filepath.Clean(device), "/"), "/", "_")
}

func (d *Daemon) statePath(device string) string {
	return filepath.Join(d.devicesDir(), stateKey(device)+".json")
}

func (d *Daemon) setPath(device string) string {
	return filepath.Join(d.devicesDir(), stateKey(device)+".set")
}

func (d *Daemon) saveState(st deviceState) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileSync(d.statePath(st.Device), append(data, '\n')); err != nil {
		return fmt.Errorf("linuxagent: saving the state of %s: %w", st.Device, err)
	}
	return nil
}

func (d *Daemon) loadStates() ([]deviceState, error) {
	paths, err := filepath.Glob(filepath.Join(d.devicesDir(), "*.json"))
	if err != nil {
		return nil, err
	}
	var out []deviceState
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("linuxagent: reading state: %w", err)
		}
		var st deviceState
		if err := json.Unmarshal(data, &st); err != nil || st.Device == "" {
			d.o.Logf("ignoring unreadable state file %s: %v", p, err)
			continue
		}
		out = append(out, st)
	}
	return out, nil
}

// saveSet writes a stopped tracer's set beside the state.
func (d *Daemon) saveSet(device string, tr Tracer) error {
	path := d.setPath(device)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("linuxagent: saving the change set of %s: %w", device, err)
	}
	w := bufio.NewWriter(f)
	err = tr.Save(w)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("linuxagent: saving the change set of %s: %w", device, err)
	}
	return syncDir(filepath.Dir(path))
}

// writeFileSync replaces path with data durably: a temporary file,
// fsync, rename, fsync of the directory.
func writeFileSync(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
