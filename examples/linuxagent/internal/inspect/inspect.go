// Package inspect implements `linuxagent inspect DEVICE_OR_IMAGE
// [--extents] [--json]`: it names the filesystem on a block device or
// image file and reports its block size and total, used and free bytes,
// as package fsparse maps them from the allocation metadata, and with
// --extents the in-use extents a full backup would read. It opens the
// device read-only and writes nothing.
package inspect

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/blockimage/blockimage/blockdev"
	"github.com/blockimage/blockimage/fsparse"
	"github.com/blockimage/blockimage/internal/bytesize"
)

// Exit statuses of Run.
const (
	exitOK    = 0
	exitError = 1 // the device could not be read or mapped
	exitUsage = 2
)

const usage = `usage: inspect DEVICE_OR_IMAGE [--extents] [--json]

Names the filesystem on DEVICE_OR_IMAGE (ext2/3/4, XFS, ReiserFS) and prints
its block size and total, used and free bytes, read from its allocation
metadata. The device is opened read-only. btrfs, FAT and swap are named but
not mapped (exit status 1, as for an unknown or damaged filesystem).

  --extents  also list the in-use extents, as byte offset and length
  --json     print one JSON object: filesystem, block_size, total_bytes,
             used_bytes, free_bytes, label, uuid, metadata_bytes_read,
             notes, and with --extents "extents": [[offset, length], ...]
`

// report is the JSON shape of --json.
type report struct {
	Device            string      `json:"device"`
	DeviceBytes       int64       `json:"device_bytes"`
	Filesystem        string      `json:"filesystem"`
	BlockSize         int64       `json:"block_size"`
	TotalBytes        int64       `json:"total_bytes"`
	UsedBytes         int64       `json:"used_bytes"`
	FreeBytes         int64       `json:"free_bytes"`
	Label             string      `json:"label"`
	UUID              string      `json:"uuid"`
	MetadataBytesRead int64       `json:"metadata_bytes_read"`
	Notes             []string    `json:"notes"`
	Extents           *[][2]int64 `json:"extents,omitempty"`
}

// Run executes the inspect command with args (those after "inspect") and
// returns the process exit status: 0 on success, 1 when the device cannot
// be read or holds no filesystem fsparse can map, 2 on a usage error.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	extents := fs.Bool("extents", false, "list the in-use extents")
	asJSON := fs.Bool("json", false, "print one JSON object")
	// Flags may come before or after the device.
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Fprint(stdout, usage)
				return exitOK
			}
			fmt.Fprintf(stderr, "inspect: %v\n%s", err, usage)
			return exitUsage
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(positional) != 1 {
		fmt.Fprintf(stderr, "inspect: want exactly one device or image, got %d\n%s", len(positional), usage)
		return exitUsage
	}
	path := positional[0]

	dev, err := openDevice(path)
	if err != nil {
		fmt.Fprintf(stderr, "inspect: %v\n", err)
		return exitError
	}
	defer dev.Close()
	size := dev.Size()

	info, es, err := fsparse.InUse(ctx, dev, size)
	mounts, _ := blockdev.MountsOf(path) // only for notes and advice
	switch {
	case errors.Is(err, fsparse.ErrUnknownFilesystem):
		fmt.Fprintf(stderr, "inspect: %s: no supported filesystem found (ext2, ext3, ext4, XFS, ReiserFS); a backup would have to copy all %d bytes\n", path, size)
		if pt := partitionTable(dev); pt != "" {
			fmt.Fprintf(stderr, "inspect: %s holds %s partition table: inspect its partitions instead (for an image, losetup --partscan)\n", path, pt)
		}
		return exitError
	case errors.Is(err, fsparse.ErrNeedsRecovery) && !*extents && info.Filesystem != "":
		// The summary can still come from the counters on disk, which
		// Detect reads (InUse may not have filled them in).
		d, derr := fsparse.Detect(dev, size)
		if derr != nil {
			fmt.Fprintf(stderr, "inspect: %s: %v\n", path, err)
			return exitError
		}
		info.UsedBytes, info.FreeBytes = d.UsedBytes, d.FreeBytes
		info.Notes = append(info.Notes, "used and free bytes are the superblock's counters (the AGFs' on XFS), not the allocation maps': "+err.Error())
	case errors.Is(err, fsparse.ErrUnsupported) && info.Filesystem != "":
		fmt.Fprintf(stderr, "inspect: %s: %s (%d bytes, label %q): its in-use blocks cannot be mapped; a backup would have to copy all %d bytes\n", path, info.Filesystem, info.TotalBytes, info.Label, size)
		return exitError
	case err != nil:
		fmt.Fprintf(stderr, "inspect: %s: %v\n", path, err)
		switch {
		case len(mounts) > 0 && errors.Is(err, fsparse.ErrCorrupt):
			fmt.Fprintf(stderr, "inspect: it is mounted at %s and may have changed while it was read: freeze it (fsfreeze --freeze %s), inspect again, then unfreeze it\n", mounts[0].MountPoint, mounts[0].MountPoint)
		case errors.Is(err, fsparse.ErrNeedsRecovery) && len(mounts) > 0:
			fmt.Fprintf(stderr, "inspect: it is mounted at %s: freeze it (fsfreeze --freeze %s) or unmount it, then inspect again\n", mounts[0].MountPoint, mounts[0].MountPoint)
		case errors.Is(err, fsparse.ErrNeedsRecovery):
			fmt.Fprintf(stderr, "inspect: it is not mounted here: if nothing else uses it, mount and unmount it once (or run its fsck) to replay the journal, then inspect again; as it is, a backup would have to copy all %d bytes\n", size)
		}
		return exitError
	}

	if len(mounts) > 0 {
		info.Notes = append(info.Notes, fmt.Sprintf("mounted at %s (%s): unless it is frozen, the filesystem changes while it is read, and data still in the page cache is not on the device yet", mounts[0].MountPoint, mounts[0].FSType))
	}

	if *asJSON {
		r := report{
			Device: path, DeviceBytes: size,
			Filesystem: info.Filesystem, BlockSize: info.BlockSize,
			TotalBytes: info.TotalBytes, UsedBytes: info.UsedBytes, FreeBytes: info.FreeBytes,
			Label: info.Label, UUID: info.UUID, MetadataBytesRead: info.MetadataBytesRead,
			Notes: info.Notes,
		}
		if r.Notes == nil {
			r.Notes = []string{}
		}
		if *extents {
			pairs := make([][2]int64, len(es))
			for i, e := range es {
				pairs[i] = [2]int64{e.Offset, e.Length}
			}
			r.Extents = &pairs
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			fmt.Fprintf(stderr, "inspect: %v\n", err)
			return exitError
		}
		return exitOK
	}

	w := &errWriter{w: stdout}
	w.printf("device:              %s (%d bytes)\n", path, size)
	w.printf("filesystem:          %s\n", info.Filesystem)
	if info.Label != "" {
		w.printf("label:               %s\n", info.Label)
	}
	if info.UUID != "" {
		w.printf("uuid:                %s\n", info.UUID)
	}
	w.printf("block size:          %d\n", info.BlockSize)
	w.printf("total bytes:         %d (%s)\n", info.TotalBytes, bytesize.IEC(info.TotalBytes))
	w.printf("used bytes:          %d (%s)\n", info.UsedBytes, bytesize.IEC(info.UsedBytes))
	w.printf("free bytes:          %d (%s)\n", info.FreeBytes, bytesize.IEC(info.FreeBytes))
	w.printf("metadata bytes read: %d\n", info.MetadataBytesRead)
	for _, n := range info.Notes {
		w.printf("note:                %s\n", n)
	}
	if *extents {
		w.printf("in-use extents:      %d (offset length, in bytes)\n", len(es))
		for _, e := range es {
			w.printf("%d %d\n", e.Offset, e.Length)
		}
	}
	if w.err != nil {
		fmt.Fprintf(stderr, "inspect: %v\n", w.err)
		return exitError
	}
	return exitOK
}

// errWriter keeps the first write error, so that a closed pipe ends the
// listing with one message.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, args ...any) {
	if e.err == nil {
		_, e.err = fmt.Fprintf(e.w, format, args...)
	}
}

// partitionTable returns "a GPT" or "an MBR" when the device starts with
// one, else "": then the filesystems are in its partitions.
func partitionTable(r io.ReaderAt) string {
	b := make([]byte, 1024)
	if n, _ := r.ReadAt(b, 0); n < 512 || b[510] != 0x55 || b[511] != 0xAA {
		return ""
	}
	if string(b[512:520]) == "EFI PART" {
		return "a GPT"
	}
	// An MBR: some entry has a type, and every status byte is 0 or 0x80.
	typed := false
	for i := 0; i < 4; i++ {
		e := b[446+16*i:]
		if e[0] != 0 && e[0] != 0x80 {
			return ""
		}
		typed = typed || e[4] != 0
	}
	if typed {
		return "an MBR"
	}
	return ""
}
