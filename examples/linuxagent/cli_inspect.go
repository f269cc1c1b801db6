package main

import (
	"context"
	"io"

	"github.com/blockimage/blockimage/examples/linuxagent/internal/inspect"
)

// cmdInspect is package inspect's command.
func cmdInspect(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return inspect.Run(ctx, args, stdout, stderr)
}
