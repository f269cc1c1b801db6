package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/blockimage/blockimage/examples/linuxagent/internal/engine"
)

// countingSink counts the bytes that reach the target.
type countingSink struct {
	t    Target
	sent atomic.Int64
}

func (s *countingSink) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := s.t.WriteAt(ctx, p, off); err != nil {
		return err
	}
	s.sent.Add(int64(len(p)))
	return nil
}

func (s *countingSink) Flush(ctx context.Context) error { return s.t.Flush(ctx) }

// compareBlock is the granularity of a diff: a chunk is compared with the
// target block by block and only the differing runs are sent.
const compareBlock = 4096

// diffSink reads what the target already holds under each write and sends
// only the blocks that differ. Its memory is one chunk, whatever the
// device size.
type diffSink struct {
	next    *countingSink
	t       Target
	buf     []byte
	skipped int64
}

func (s *diffSink) WriteAt(ctx context.Context, p []byte, off int64) error {
	if cap(s.buf) < len(p) {
		s.buf = make([]byte, len(p))
	}
	old := s.buf[:len(p)]
	n, err := s.t.ReadAt(ctx, old, off)
	if err != nil && !(errors.Is(err, io.EOF) && n == len(p)) {
		return fmt.Errorf("linuxagent: diff: reading the target at %d: %w", off, err)
	}
	// Send each maximal run of differing blocks as one write.
	runStart := -1
	for i := 0; i < len(p); i += compareBlock {
		end := min(i+compareBlock, len(p))
		same := bytes.Equal(p[i:end], old[i:end])
		if !same && runStart < 0 {
			runStart = i
		}
		if same {
			s.skipped += int64(end - i)
			if runStart >= 0 {
				if err := s.next.WriteAt(ctx, p[runStart:i], off+int64(runStart)); err != nil {
					return err
				}
				runStart = -1
			}
		}
	}
	if runStart >= 0 {
		return s.next.WriteAt(ctx, p[runStart:], off+int64(runStart))
	}
	return nil
}

func (s *diffSink) Flush(ctx context.Context) error { return s.next.Flush(ctx) }

// quietLog is the change log of a device nothing writes: an unmounted
// device or image file when no tracer runs, or a mounted one whole copy
// happens inside a single freeze.
type quietLog struct{ epoch uint64 }

func (l *quietLog) Flush(context.Context) error                 { return nil }
func (l *quietLog) Cut() uint64                                 { l.epoch++; return l.epoch }
func (l *quietLog) Pending(uint64) []engine.Extent              { return nil }
func (l *quietLog) Acknowledge(es []engine.Extent, upTo uint64) {}
func (l *quietLog) Complete() (bool, string)                    { return true, "" }
