package virt

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
)

// ImageLayer is one image of a backing chain, as `qemu-img info
// --backing-chain --output=json` describes it.
type ImageLayer struct {
	Filename    string `json:"filename"`
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual-size"`
	BackingFile string `json:"backing-filename"`
}

// ImageChain returns the backing chain of the image at path, the image
// itself first; a chain of length one has no backing file. It runs
// `qemu-img info -U --backing-chain --output=json`: -U (force share) lets
// it read an image a running guest holds locked. format is the image
// format the domain XML declares; it is passed with -f so that a raw image
// is never probed as something else.
func ImageChain(ctx context.Context, path, format string) ([]ImageLayer, error) {
	args := []string{"info", "-U", "--backing-chain", "--output=json"}
	if format != "" {
		args = append(args, "-f", format)
	}
	args = append(args, "--", path)
	cmd := exec.CommandContext(ctx, "qemu-img", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("virt: qemu-img info %s: %w: %s", path, err, bytes.TrimSpace(stderr.Bytes()))
	}
	var chain []ImageLayer
	if err := json.Unmarshal(out, &chain); err != nil {
		return nil, fmt.Errorf("virt: qemu-img info %s: %w", path, err)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("virt: qemu-img info %s: empty backing chain", path)
	}
	return chain, nil
}

// Flatten writes the whole chain of src (format) into dst, a new
// standalone image of the same format without a backing file, with
// `qemu-img convert` (which keeps unallocated areas sparse).
func Flatten(ctx context.Context, src, format, dst string) error {
	cmd := exec.CommandContext(ctx, "qemu-img", "convert", "-U", "-f", format, "-O", format, "--", src, dst)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("virt: qemu-img convert %s: %w: %s", src, err, bytes.TrimSpace(out))
	}
	return nil
}
