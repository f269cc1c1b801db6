package blockdev_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"time"

	"github.com/blockimage/blockimage/blockdev"
)

// A backup agent's consistency point: freeze the filesystem on /dev/vdb1,
// flush the device and the change tracer, copy what must be consistent,
// thaw. The program's main must call blockdev.Main first, so that the
// sequencer can start its watchdog.
func ExampleSequencer() {
	// func main() { blockdev.Main(); ... }
	ctx := context.Background()
	var flushTracer func(context.Context) error // e.g. a tracer.Tracer's Flush

	s := &blockdev.Sequencer{
		Device:      "/dev/vdb1",
		Deadline:    5 * time.Second, // writers on the machine wait at most this long
		FlushTracer: flushTracer,
	}
	rep, err := s.Run(ctx, func(ctx context.Context) error {
		// Inside the freeze: read the device, never write to its
		// filesystem (that would block until the thaw).
		dev, err := blockdev.Open(s.Device, os.O_RDONLY)
		if err != nil {
			return err
		}
		defer dev.Close()
		_, err = io.Copy(io.Discard, io.NewSectionReader(dev, 0, 1<<20))
		return err
	})
	switch {
	case errors.Is(err, blockdev.ErrNotConsistent):
		log.Printf("not consistent, thawed after %v; try again with less to copy: %v", rep.FrozenFor, err)
	case errors.Is(err, blockdev.ErrRefused):
		log.Fatal(err) // the filesystem of / or of this program
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Printf("%s (%s) frozen for %v\n", rep.MountPoint, rep.FSType, rep.FrozenFor)
	}
}

// ParseMountInfo works on any copy of a mountinfo file; a bind mount shows
// the same device number with another root.
func ExampleParseMountInfo() {
	const mountinfo = `27 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
95 27 7:3 / /mnt/data\040disk rw,relatime shared:50 - xfs /dev/loop3 rw
96 27 7:3 /sub /srv/bind rw,relatime shared:50 - xfs /dev/loop3 rw
`
	mounts, err := blockdev.ParseMountInfo(strings.NewReader(mountinfo), func(m *blockdev.Mount) bool {
		return m.Major == 7 && m.Minor == 3
	})
	if err != nil {
		log.Fatal(err)
	}
	for _, m := range mounts {
		fmt.Printf("%q root %s %s\n", m.MountPoint, m.Root, m.FSType)
	}
	// Output:
	// "/mnt/data disk" root / xfs
	// "/srv/bind" root /sub xfs
}
