//go:build !linux

package tracer

import (
	"context"
	"errors"
	"fmt"
)

// Start needs Linux's blktrace or ftrace; elsewhere it fails.
func Start(ctx context.Context, device string, o Options) (*Tracer, error) {
	return nil, fmt.Errorf("tracer: %w: %w", ErrUnavailable, errors.ErrUnsupported)
}
