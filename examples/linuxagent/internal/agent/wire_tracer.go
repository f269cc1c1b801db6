package agent

import (
	"context"
	"io"

	"github.com/blockimage/blockimage/examples/linuxagent/internal/engine"
	"github.com/blockimage/blockimage/tracer"
)

func init() { System.StartTracer = startTracer }

// traced adapts a running tracer.Tracer and its Set to the engine's
// change log.
type traced struct {
	t *tracer.Tracer
	s *tracer.Set
}

// startTracer starts tracing device into a new set.
func startTracer(ctx context.Context, device string) (Tracer, error) {
	t, err := tracer.Start(ctx, device, tracer.Options{})
	if err != nil {
		return nil, err
	}
	return &traced{t: t, s: t.Set()}, nil
}

// Adopt merges a saved set. Merge carries over its incompleteness, which
// is at least "tracing stopped" from the earlier tracer's Stop; the caller
// vouches that nothing was missed, so that mark is repaired, unless the
// new tracer itself lost events already.
func (c *traced) Adopt(saved io.Reader) error {
	old, err := tracer.ReadSet(saved)
	if err != nil {
		return err
	}
	fresh, _ := c.s.Complete()
	if err := c.s.Merge(old); err != nil {
		return err
	}
	if fresh {
		c.s.MarkComplete(c.s.Cut())
	}
	return nil
}

func (c *traced) Flush(ctx context.Context) error { return c.t.Flush(ctx) }
func (c *traced) Cut() uint64                     { return c.s.Cut() }
func (c *traced) Complete() (bool, string)        { return c.s.Complete() }
func (c *traced) Stop() error                     { return c.t.Stop() }
func (c *traced) CompleteAtStop() (bool, string)  { return c.t.CompleteAtStop() }

func (c *traced) Save(w io.Writer) error {
	_, err := c.s.WriteTo(w)
	return err
}

func (c *traced) Pending(upTo uint64) []engine.Extent {
	es := c.s.Pending(upTo)
	out := make([]engine.Extent, len(es))
	for i, e := range es {
		out[i] = engine.Extent{Offset: e.Offset, Length: e.Length}
	}
	return out
}

func (c *traced) Acknowledge(es []engine.Extent, upTo uint64) {
	in := make([]tracer.Extent, len(es))
	for i, e := range es {
		in[i] = tracer.Extent{Offset: e.Offset, Length: e.Length}
	}
	c.s.Acknowledge(in, upTo)
}
