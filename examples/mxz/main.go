// Command mxz is a small xz-like compressor on mtcp's pool of child
// processes, so anyone can try mtcp and compare it with xz:
//
//	mxz [-d|-t] [-k] [-c] [-f] [-v] [-T N] [-0..-9] [--codec go|liblzma]
//	    [--block-size BYTES] [FILE...]
//
// Without FILE (or with "-") it reads standard input and writes standard
// output. Compressing FILE writes FILE.xz and removes FILE unless -k or
// -c; decompressing FILE.xz writes FILE. -T N runs N compression children
// (0, the default, chooses from memory and CPUs) or N decompression
// workers. The default codec is liblzma when the binary was built with
// cgo, else the pure-Go one; the output is one .xz Stream of independent
// Blocks that stock xz reads.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/blockimage/blockimage/mtcp"
)

func main() {
	mtcp.Main() // a compression child runs here and exits
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
