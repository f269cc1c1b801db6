package agent

import (
	"context"

	"github.com/blockimage/blockimage/nbd"
)

func init() {
	openNBD = dialNBD
}

// nbdTarget is an NBD export reached with nbd.Client.
type nbdTarget struct{ c *nbd.Client }

func dialNBD(ctx context.Context, uri string) (Target, error) {
	c, err := nbd.Dial(ctx, uri, nbd.Options{})
	if err != nil {
		return nil, err
	}
	return &nbdTarget{c: c}, nil
}

func (t *nbdTarget) WriteAt(ctx context.Context, p []byte, off int64) error {
	return t.c.WriteAt(ctx, p, off)
}

func (t *nbdTarget) Flush(ctx context.Context) error { return t.c.Flush(ctx) }

func (t *nbdTarget) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := t.c.ReadAt(ctx, p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (t *nbdTarget) Size() int64  { return t.c.Size() }
func (t *nbdTarget) Close() error { return t.c.Close() }
