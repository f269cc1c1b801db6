// Command nbdwrite copies an image file to an NBD export with nbd.Sink, for
// bench/nbd-write: nbdwrite [flags] IMAGE NBD-URI.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"

	"golang.org/x/sys/unix"
	"time"

	"github.com/blockimage/blockimage/nbd"
)

func main() {
	conns := flag.Int("connections", 0, "connections when the export allows multi-conn (0: default)")
	inflight := flag.Int("requests", 0, "requests in flight per connection (0: default)")
	reqSize := flag.Int("request-size", 0, "request size in bytes (0: default)")
	chunk := flag.Int("chunk", 4<<20, "bytes per WriteAt call")
	maxUnflushed := flag.Int64("max-unflushed", 0, "bound on unflushed bytes held in memory (0: default)")
	zero := flag.String("zero", "write", "all-zero blocks: write, allocate, trim or skip")
	noFlush := flag.Bool("no-flush", false, "do not flush at the end")
	copyData := flag.Bool("copy", false, "keep a copy of unflushed data instead of reading it back from IMAGE (flushes when -max-unflushed is reached)")
	verbose := flag.Bool("v", false, "print a summary")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile to this file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "nbdwrite:", err)
			os.Exit(1)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: nbdwrite [flags] IMAGE NBD-URI")
		os.Exit(2)
	}
	o := nbd.SinkOptions{
		Options:      nbd.Options{Connections: *conns, MaxInFlight: *inflight, RequestSize: *reqSize},
		MaxUnflushed: *maxUnflushed,
	}
	switch *zero {
	case "write":
		o.Zero = nbd.ZeroWrite
	case "allocate":
		o.Zero = nbd.ZeroAllocate
	case "trim":
		o.Zero = nbd.ZeroTrim
	case "skip":
		o.Zero = nbd.ZeroSkip
	default:
		fmt.Fprintf(os.Stderr, "nbdwrite: bad -zero %q\n", *zero)
		os.Exit(2)
	}
	if err := run(flag.Arg(0), flag.Arg(1), o, *chunk, !*noFlush, !*copyData, *verbose); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "nbdwrite:", err)
		os.Exit(1)
	}
}

func run(image, uri string, o nbd.SinkOptions, chunk int, flush, source, verbose bool) error {
	ctx := context.Background()
	start := time.Now()
	f, err := os.Open(image)
	if err != nil {
		return err
	}
	defer f.Close()
	if source {
		o.Source = f
	}
	s, err := nbd.NewSink(ctx, uri, o)
	if err != nil {
		return err
	}
	defer s.Close()
	// Read ahead in another goroutine, so that reading the image overlaps
	// sending it, as a backup agent reading a device would.
	type piece struct {
		buf  []byte
		off  int64
		zero int64 // a hole of this length at off, instead of buf
		err  error
	}
	const depth = 4
	free := make(chan []byte, depth)
	for range depth {
		free <- make([]byte, chunk)
	}
	full := make(chan piece, depth)
	go func() {
		defer close(full)
		for off := int64(0); off < s.Size(); {
			// Holes of a sparse image are sent as zeroes without reading
			// them, as nbdcopy does with the source's extents.
			if data := dataFrom(f, off, s.Size()); data > off {
				full <- piece{off: off, zero: data - off}
				off = data
				continue
			}
			buf := <-free
			end := min(off+int64(chunk), s.Size(), holeFrom(f, off, s.Size()))
			n, err := f.ReadAt(buf[:end-off], off)
			if err == io.EOF && n > 0 {
				err = nil
			}
			if n > 0 {
				full <- piece{buf: buf[:n], off: off}
				off += int64(n)
			}
			if err != nil || n == 0 {
				if err != nil && !errors.Is(err, io.EOF) {
					full <- piece{err: err}
				}
				return
			}
		}
	}()
	var off int64
	for p := range full {
		if p.err != nil {
			return p.err
		}
		if p.zero > 0 {
			if err := s.WriteZeroes(ctx, p.off, p.zero); err != nil {
				return err
			}
			off = p.off + p.zero
			continue
		}
		if err := s.WriteAt(ctx, p.buf, p.off); err != nil {
			return err
		}
		off = p.off + int64(len(p.buf))
		free <- p.buf[:cap(p.buf)]
	}
	if flush {
		if err := s.Flush(ctx); err != nil {
			return err
		}
	}
	if verbose {
		fmt.Fprintf(os.Stderr, "nbdwrite: %d bytes in %v, %d reconnects\n", off, time.Since(start), s.Reconnects())
	}
	return s.Close()
}

// dataFrom returns the start of the next data at or after off (size if
// none, off if unknown).
func dataFrom(f *os.File, off, size int64) int64 {
	d, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return size
	}
	if err != nil {
		return off
	}
	return min(d, size)
}

// holeFrom returns the start of the next hole after off (size if unknown).
func holeFrom(f *os.File, off, size int64) int64 {
	h, err := unix.Seek(int(f.Fd()), off, unix.SEEK_HOLE)
	if err != nil || h <= off {
		return size
	}
	return min(h, size)
}
