package main

import (
	"context"
	"fmt"
	"io"
)

// cmdInspect delegates to package inspect once it is part of the build.
func cmdInspect(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if inspectRun == nil {
		fmt.Fprintln(stderr, "linuxagent inspect: not available in this build (package examples/linuxagent/internal/inspect has not landed)")
		return 1
	}
	return inspectRun(ctx, args, stdout, stderr)
}

// inspectRun is set by wire_inspect.go.
var inspectRun func(ctx context.Context, args []string, stdout, stderr io.Writer) int
