package agent

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/blockimage/blockimage/nbd"
)

func init() {
	openNBD = dialNBD
	openNBDSource = dialNBDSource
}

// sinkMemory bounds the data the sink holds until a FLUSH makes it
// durable, for resending after a reconnect; with the device as its
// Source the sink holds no data, and flushes in the background every
// 4×sinkMemory bytes to bound what a reconnect resends.
const sinkMemory = 64 << 20

// nbdTarget writes through an nbd.Sink, which reconnects and resends
// what no FLUSH covered when the connection drops, so a backup survives
// a bad network and a server restart. Reads, for diff backups, go over a
// client of their own, dialled on first use.
type nbdTarget struct {
	uri  string
	sink *nbd.Sink

	mu     sync.Mutex
	reader *nbd.Client
}

// dialNBD connects a sink that resends from src after a reconnect: a
// block that changed on the device since it was first sent was written
// meanwhile, so the tracer has it pending for a later pass anyway.
func dialNBD(ctx context.Context, uri string, src io.ReaderAt) (Target, error) {
	o := nbd.SinkOptions{MaxUnflushed: sinkMemory}
	if src != nil {
		o.Source = src
	}
	s, err := nbd.NewSink(ctx, uri, o)
	if err != nil {
		return nil, err
	}
	return &nbdTarget{uri: uri, sink: s}, nil
}

func (t *nbdTarget) WriteAt(ctx context.Context, p []byte, off int64) error {
	return t.sink.WriteAt(ctx, p, off)
}

func (t *nbdTarget) Flush(ctx context.Context) error { return t.sink.Flush(ctx) }

func (t *nbdTarget) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	t.mu.Lock()
	if t.reader == nil {
		c, err := nbd.Dial(ctx, t.uri, nbd.Options{})
		if err != nil {
			t.mu.Unlock()
			return 0, err
		}
		t.reader = c
	}
	c := t.reader
	t.mu.Unlock()
	if err := c.ReadAt(ctx, p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (t *nbdTarget) Size() int64 { return t.sink.Size() }

func (t *nbdTarget) Close() error {
	err := t.sink.Close()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.reader != nil {
		err = errors.Join(err, t.reader.Close())
	}
	return err
}

// nbdSource reads an export, for restores; it may be read-only.
type nbdSource struct{ c *nbd.Client }

func dialNBDSource(ctx context.Context, uri string) (Target, error) {
	c, err := nbd.Dial(ctx, uri, nbd.Options{})
	if err != nil {
		return nil, err
	}
	return &nbdSource{c: c}, nil
}

func (s *nbdSource) WriteAt(ctx context.Context, p []byte, off int64) error {
	return errors.New("linuxagent: a restore source is not written")
}
func (s *nbdSource) Flush(ctx context.Context) error { return nil }
func (s *nbdSource) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := s.c.ReadAt(ctx, p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}
func (s *nbdSource) Size() int64  { return s.c.Size() }
func (s *nbdSource) Close() error { return s.c.Close() }
