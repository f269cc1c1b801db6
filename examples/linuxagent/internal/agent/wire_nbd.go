package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/blockimage/blockimage/examples/linuxagent/internal/engine"
	"github.com/blockimage/blockimage/nbd"
)

func init() {
	openNBD = dialNBD
	openNBDSource = dialNBDSource
}

// sinkMemory bounds the data the sink holds until a FLUSH makes it
// durable, for resending after a reconnect; with the device as its
// Source the sink holds no data, and flushes in the background every
// 4×sinkMemory bytes to bound what a reconnect resends. A diff target
// flushes every sinkMemory bytes for the same reason.
const sinkMemory = 64 << 20

// nbdTarget writes through an nbd.Sink, which reconnects and resends
// what no FLUSH covered when the connection drops, so a backup survives
// a bad network and a server restart.
type nbdTarget struct {
	sink *nbd.Sink
}

// dialNBD connects to uri for a backup of src. A full or incremental
// backup writes through a sink that resends from src after a reconnect: a
// block that changed on the device since it was first sent was written
// meanwhile, so the tracer has it pending for a later pass anyway. A diff
// reads the target too, over the same single connection (diffTarget).
func dialNBD(ctx context.Context, uri string, src io.ReaderAt, diff bool) (Target, error) {
	var t Target
	var err error
	if diff {
		t, err = dialDiffTarget(ctx, uri, src)
	} else {
		o := nbd.SinkOptions{MaxUnflushed: sinkMemory}
		if src != nil {
			o.Source = src
		}
		var s *nbd.Sink
		if s, err = nbd.NewSink(ctx, uri, o); err == nil {
			t = &nbdTarget{sink: s}
		}
	}
	if errors.Is(err, nbd.ErrUnsupported) && strings.Contains(err.Error(), "FLUSH") {
		err = fmt.Errorf("%w (nbd-server needs 'flush = true' in the export's section; qemu-nbd and nbdkit offer FLUSH)", err)
	}
	return t, err
}

func (t *nbdTarget) WriteAt(ctx context.Context, p []byte, off int64) error {
	return t.sink.WriteAt(ctx, p, off)
}

func (t *nbdTarget) Flush(ctx context.Context) error { return t.sink.Flush(ctx) }

func (t *nbdTarget) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	return 0, errors.New("linuxagent: this target was opened for writing only")
}

func (t *nbdTarget) Size() int64  { return t.sink.Size() }
func (t *nbdTarget) Close() error { return t.sink.Close() }

// nbdSource reads an export, for restores; it may be read-only.
type nbdSource struct{ c *nbdConn }

func dialNBDSource(ctx context.Context, uri string) (Target, error) {
	c := &nbdConn{uri: uri}
	if _, err := c.client(ctx); err != nil {
		return nil, err
	}
	return &nbdSource{c: c}, nil
}

func (s *nbdSource) WriteAt(ctx context.Context, p []byte, off int64) error {
	return errors.New("linuxagent: a restore source is not written")
}
func (s *nbdSource) Flush(ctx context.Context) error { return nil }
func (s *nbdSource) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := s.c.do(ctx, func(c *nbd.Client) error { return c.ReadAt(ctx, p, off) }); err != nil {
		return 0, err
	}
	return len(p), nil
}
func (s *nbdSource) Size() int64  { return s.c.size }
func (s *nbdSource) Close() error { return s.c.Close() }

// diffTarget is the target of a diff backup, which reads what the target
// holds before each write. Reads and writes share one connection, since a
// server may take one client at a time (qemu-nbd without --shared). When
// the connection drops it reconnects, sends again from src every write no
// FLUSH covered yet, and retries, as the sink of a full backup does.
type diffTarget struct {
	c   *nbdConn
	src io.ReaderAt
	buf []byte

	unflushed []engine.Extent // written since the last FLUSH, merged
	pending   int64
}

func dialDiffTarget(ctx context.Context, uri string, src io.ReaderAt) (Target, error) {
	t := &diffTarget{c: &nbdConn{uri: uri}, src: src}
	t.c.reconnected = t.resend
	c, err := t.c.client(ctx)
	if err != nil {
		return nil, err
	}
	// The checks nbd.NewSink makes for a full backup.
	switch {
	case c.Flags()&nbd.FlagReadOnly != 0:
		err = fmt.Errorf("nbd: export is read-only: %w", nbd.ErrUnsupported)
	case c.Flags()&nbd.FlagSendFlush == 0:
		err = fmt.Errorf("nbd: export does not support FLUSH, so nothing written could be known durable: %w", nbd.ErrUnsupported)
	}
	if err != nil {
		t.c.Close()
		return nil, err
	}
	return t, nil
}

func (t *diffTarget) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := t.c.do(ctx, func(c *nbd.Client) error { return c.ReadAt(ctx, p, off) }); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (t *diffTarget) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := t.c.do(ctx, func(c *nbd.Client) error { return c.WriteAt(ctx, p, off) }); err != nil {
		return err
	}
	n := len(t.unflushed)
	if n > 0 && t.unflushed[n-1].Offset+t.unflushed[n-1].Length == off {
		t.unflushed[n-1].Length += int64(len(p))
	} else {
		t.unflushed = append(t.unflushed, engine.Extent{Offset: off, Length: int64(len(p))})
	}
	t.pending += int64(len(p))
	if t.pending >= sinkMemory {
		return t.Flush(ctx)
	}
	return nil
}

func (t *diffTarget) Flush(ctx context.Context) error {
	if err := t.c.do(ctx, func(c *nbd.Client) error { return c.Flush(ctx) }); err != nil {
		return err
	}
	t.unflushed, t.pending = t.unflushed[:0], 0
	return nil
}

// resend writes again, on a new connection, what no FLUSH covered: the
// server may have lost it with the old one.
func (t *diffTarget) resend(ctx context.Context, c *nbd.Client) error {
	if t.buf == nil {
		t.buf = make([]byte, 1<<20)
	}
	for _, e := range t.unflushed {
		for off := e.Offset; off < e.Offset+e.Length; {
			n := min(int64(len(t.buf)), e.Offset+e.Length-off)
			if got, err := t.src.ReadAt(t.buf[:n], off); err != nil && !(errors.Is(err, io.EOF) && int64(got) == n) {
				return fmt.Errorf("linuxagent: re-reading the device at %d to resend it: %w", off, err)
			}
			if err := c.WriteAt(ctx, t.buf[:n], off); err != nil {
				return err
			}
			off += n
		}
	}
	return nil
}

func (t *diffTarget) Size() int64  { return t.c.size }
func (t *diffTarget) Close() error { return t.c.Close() }

// readReconnectTimeout is how long an nbdConn keeps reconnecting after
// the connection dropped, as long as the sink does.
const readReconnectTimeout = 2 * time.Minute

// nbdConn is a client that dials again when the connection drops or the
// server restarts, and sends the failed request again: reads have no
// effect on the export, and a diff target resends its unflushed writes
// (reconnected) before the retry.
type nbdConn struct {
	uri string
	// reconnected, if set, runs on each new connection after the first.
	reconnected func(ctx context.Context, c *nbd.Client) error

	mu      sync.Mutex
	c       *nbd.Client
	size    int64
	dropped bool
}

// client returns the connected client, dialling it when there is none.
func (r *nbdConn) client(ctx context.Context) (*nbd.Client, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c != nil {
		return r.c, nil
	}
	c, err := nbd.Dial(ctx, r.uri, nbd.Options{})
	if err != nil {
		return nil, err
	}
	if r.size != 0 && c.Size() != r.size {
		c.Close()
		return nil, fmt.Errorf("linuxagent: %s changed size from %d to %d bytes across a reconnect", r.uri, r.size, c.Size())
	}
	if r.dropped && r.reconnected != nil {
		if err := r.reconnected(ctx, c); err != nil {
			c.Close()
			return nil, err
		}
	}
	r.c, r.size = c, c.Size()
	return c, nil
}

// drop closes c if it is still the current client.
func (r *nbdConn) drop(c *nbd.Client) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c == c {
		r.c.Close()
		r.c, r.dropped = nil, true
	}
}

// do runs op on the client, reconnecting and running it again while the
// connection drops, for up to readReconnectTimeout.
func (r *nbdConn) do(ctx context.Context, op func(c *nbd.Client) error) error {
	var giveUp time.Time
	backoff := 50 * time.Millisecond
	for {
		c, err := r.client(ctx)
		if err == nil {
			if err = op(c); err == nil {
				return nil
			}
			if !errors.Is(err, nbd.ErrDisconnected) {
				return err // the server answered with an error
			}
			r.drop(c)
		} else if r.size == 0 {
			return err // never connected: nothing to resume
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// A dial fails while the server restarts: that is retried too.
		if giveUp.IsZero() {
			giveUp = time.Now().Add(readReconnectTimeout)
		} else if time.Now().After(giveUp) {
			return fmt.Errorf("linuxagent: %s: gave up reconnecting after %v: %w", r.uri, readReconnectTimeout, err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (r *nbdConn) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c == nil {
		return nil
	}
	err := r.c.Close()
	r.c = nil
	return err
}
