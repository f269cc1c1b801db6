package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/blockimage/blockimage/internal/iox"
	"github.com/blockimage/blockimage/mtcp"
	"github.com/blockimage/blockimage/mtcp/liblzma"
)

type mode int

const (
	compressMode mode = iota
	decompressMode
	testMode
)

type config struct {
	mode      mode
	keep      bool
	stdout    bool
	force     bool
	verbose   bool
	threads   int
	level     int
	codec     string
	blockSize int
	files     []string
}

const usage = `usage: mxz [-d|-t] [-k] [-c] [-f] [-v] [-T N] [-0..-9] [--codec go|liblzma] [--block-size BYTES] [FILE...]`

// parseArgs reads xz-style options: bundled short flags (-dc, -9, -T2,
// -T 2), long flags with = or a separate value, "--" and "-".
func parseArgs(args []string) (config, error) {
	c := config{level: 6, codec: "go"}
	if liblzma.Available() {
		c.codec = liblzma.Name
	}
	value := func(i *int, arg, inline string, hasInline bool) (string, error) {
		if hasInline {
			return inline, nil
		}
		if *i+1 >= len(args) {
			return "", fmt.Errorf("option %s needs a value", arg)
		}
		*i++
		return args[*i], nil
	}
	number := func(name, s string) (int, error) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%s: %q is not a non-negative number", name, s)
		}
		return n, nil
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			c.files = append(c.files, args[i+1:]...)
			return c, nil
		case a == "-" || !strings.HasPrefix(a, "-"):
			c.files = append(c.files, a)
		case strings.HasPrefix(a, "--"):
			name, val, has := strings.Cut(a[2:], "=")
			var err error
			switch name {
			case "decompress", "uncompress":
				c.mode = decompressMode
			case "compress":
				c.mode = compressMode
			case "test":
				c.mode = testMode
			case "keep":
				c.keep = true
			case "stdout", "to-stdout":
				c.stdout = true
			case "force":
				c.force = true
			case "verbose":
				c.verbose = true
			case "threads":
				var v string
				if v, err = value(&i, a, val, has); err == nil {
					c.threads, err = number("--threads", v)
				}
			case "codec":
				c.codec, err = value(&i, a, val, has)
			case "block-size":
				var v string
				if v, err = value(&i, a, val, has); err == nil {
					c.blockSize, err = number("--block-size", v)
				}
			case "help":
				return c, errHelp
			default:
				return c, fmt.Errorf("unknown option %s", a)
			}
			if err != nil {
				return c, err
			}
		default:
			for j := 1; j < len(a); j++ {
				switch f := a[j]; {
				case f >= '0' && f <= '9':
					c.level = int(f - '0')
				case f == 'd':
					c.mode = decompressMode
				case f == 'z':
					c.mode = compressMode
				case f == 't':
					c.mode = testMode
				case f == 'k':
					c.keep = true
				case f == 'c':
					c.stdout = true
				case f == 'f':
					c.force = true
				case f == 'v':
					c.verbose = true
				case f == 'h':
					return c, errHelp
				case f == 'T':
					v, err := value(&i, "-T", a[j+1:], j+1 < len(a))
					if err != nil {
						return c, err
					}
					if c.threads, err = number("-T", v); err != nil {
						return c, err
					}
					j = len(a)
				default:
					return c, fmt.Errorf("unknown option -%c", f)
				}
			}
		}
	}
	return c, nil
}

var errHelp = errors.New(usage)

// run is mxz without the process around it; it returns the exit status
// (0 success, 1 error) like xz.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c, err := parseArgs(args)
	if err != nil {
		fmt.Fprintln(stderr, "mxz:", err)
		if err == errHelp {
			return 0
		}
		return 1
	}
	if len(c.files) == 0 {
		c.files = []string{"-"}
	}
	status := 0
	for _, name := range c.files {
		if err := c.file(ctx, name, stdin, stdout, stderr); err != nil {
			fmt.Fprintf(stderr, "mxz: %s: %v\n", name, err)
			status = 1
		}
	}
	return status
}

// file processes one input, "-" being standard input.
func (c config) file(ctx context.Context, name string, stdin io.Reader, stdout, stderr io.Writer) error {
	in, inName := stdin, "(stdin)"
	var inFile *os.File
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
			return errors.New("not a regular file, skipping")
		}
		in, inFile, inName = f, f, name
	}
	toStdout := name == "-" || c.stdout || c.mode == testMode
	var outName string
	if !toStdout {
		switch c.mode {
		case compressMode:
			if strings.HasSuffix(name, ".xz") {
				return errors.New("already has the .xz suffix, skipping")
			}
			outName = name + ".xz"
		case decompressMode:
			base, ok := strings.CutSuffix(name, ".xz")
			if !ok || base == "" {
				return errors.New("filename has an unknown suffix, skipping")
			}
			outName = base
		}
	}
	var out io.Writer = stdout
	var outFile *os.File
	if c.mode == testMode {
		out = io.Discard
	} else if outName != "" {
		flag := os.O_WRONLY | os.O_CREATE | os.O_EXCL
		if c.force {
			flag = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
		}
		perm := os.FileMode(0o600)
		if fi, err := inFile.Stat(); err == nil {
			perm = fi.Mode().Perm()
		}
		f, err := os.OpenFile(outName, flag, perm)
		if err != nil {
			return err
		}
		out, outFile = f, f
	}
	start := time.Now()
	inBytes, outBytes, err := c.transform(ctx, in, out)
	if outFile != nil {
		if cerr := outFile.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(outName)
		}
	}
	if err != nil {
		return err
	}
	if c.verbose {
		secs := time.Since(start).Seconds()
		fmt.Fprintf(stderr, "mxz: %s: %d -> %d bytes (%.3f), %.1f MB/s\n", inName, inBytes, outBytes,
			float64(outBytes)/float64(max(inBytes, 1)), float64(max(inBytes, outBytes))/secs/1e6)
	}
	if outName != "" && !c.keep {
		return os.Remove(name)
	}
	return nil
}

// inputSize is the size of a regular input file, for -v; 0 for a pipe.
func inputSize(in io.Reader) int64 {
	if f, ok := in.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			return fi.Size()
		}
	}
	return 0
}

// transform compresses or decompresses in to out and returns the bytes
// read and written.
func (c config) transform(ctx context.Context, in io.Reader, out io.Writer) (int64, int64, error) {
	cw := &iox.CountingWriter{W: out}
	if c.mode == compressMode {
		w, err := mtcp.NewWriter(ctx, cw, mtcp.Options{
			Level: c.level, Children: c.threads, Codec: c.codec, ChunkSize: c.blockSize,
			Logf: func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) },
		})
		if err != nil {
			return 0, 0, err
		}
		n, err := io.Copy(w, in)
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		return n, cw.N, err
	}
	r, err := mtcp.NewReader(ctx, in, mtcp.ReaderOptions{Workers: c.threads})
	if err != nil {
		return 0, 0, err
	}
	defer r.Close()
	_, err = io.Copy(cw, r)
	return inputSize(in), cw.N, err
}
