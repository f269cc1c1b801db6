package nbd

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Flush returns once every earlier write is durable (a successful FLUSH
// covered it), reconnecting and resending as needed.
func (s *Sink) Flush(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	return s.fail(s.checkpoint(ctx, true))
}

// checkpoint completes the FLUSH in flight, if any, and starts a new one
// covering every write sent so far. With wait it returns only when nothing
// is pending; otherwise the new FLUSH is left in flight.
func (s *Sink) checkpoint(ctx context.Context, wait bool) error {
	for {
		if s.flushing != nil {
			if err := s.finishFlush(ctx); err != nil {
				return err
			}
			continue // finishFlush may have recovered: look again
		}
		if len(s.pending) == 0 {
			return nil
		}
		// Every pending write must be acknowledged before the FLUSH is
		// sent, or the FLUSH does not cover it.
		for len(s.inflight) > 0 {
			if err := s.await(ctx, s.inflight[0]); err != nil {
				return err
			}
		}
		if !s.allAcked() {
			continue // a recovery resent writes
		}
		cn := s.client.pick()
		r := &request{cmd: cmdFlush}
		if err := cn.start(ctx, r, 0, nil); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err := s.recover(ctx, err); err != nil {
				return err
			}
			continue
		}
		s.flushing = &sinkFlush{cn: cn, r: r, n: len(s.pending)}
		if !wait {
			return nil
		}
	}
}

func (s *Sink) allAcked() bool {
	for _, w := range s.pending {
		if !w.acked {
			return false
		}
	}
	return true
}

// finishFlush waits for the FLUSH in flight and, when it succeeded, moves
// the writes it covered to the durable set.
func (s *Sink) finishFlush(ctx context.Context) error {
	f := s.flushing
	err := f.cn.wait(ctx, f.r)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.flushing = nil
		var ne *Error
		if errors.As(err, &ne) {
			// The server could not make them durable: send them again.
			return s.resend(ctx, s.pending[:f.n], err)
		}
		return s.recover(ctx, err)
	}
	s.flushing = nil
	var done []Extent
	var fresh extentSet
	for _, w := range s.pending[:f.n] {
		s.buffered -= int64(len(w.data))
		s.release(w)
		fresh.add(w.off, w.n)
	}
	// A later pending write over the same blocks supersedes the flushed
	// data: those blocks are not durable yet.
	for _, w := range s.pending[f.n:] {
		fresh.remove(w.off, w.n)
	}
	for _, e := range fresh {
		s.durable.add(e.Offset, e.Length)
		done = append(done, e)
	}
	clear(s.pending[:f.n])
	s.pending = s.pending[f.n:]
	if len(s.pending) == 0 {
		s.pending = nil
	}
	if s.opts.OnDurable != nil && len(done) > 0 {
		s.opts.OnDurable(done)
	}
	return nil
}

// resend sends writes again after the server failed a FLUSH.
func (s *Sink) resend(ctx context.Context, ws []*sinkWrite, cause error) error {
	for _, w := range ws {
		w.tries++
		if w.tries > s.opts.Retries {
			return fmt.Errorf("nbd: sink: flush failed %d times: %w", w.tries, cause)
		}
		if w.cmd != 0 {
			w.acked = false
		}
	}
	for _, w := range ws {
		if err := s.send(ctx, w); err != nil {
			return err
		}
	}
	return nil
}

// recover replaces a broken connection: it reconnects with exponential
// backoff until ReconnectTimeout, and resends every pending write, since
// the server may have lost anything no FLUSH covered.
func (s *Sink) recover(ctx context.Context, cause error) error {
	if errors.Is(cause, ErrClosed) && s.err != nil {
		return s.err
	}
	deadline := time.Now().Add(s.opts.ReconnectTimeout)
	for attempt := 1; ; attempt++ {
		s.client.Close()
		s.inflight = nil
		s.flushing = nil
		for _, w := range s.pending {
			w.cn, w.r = nil, nil
			if w.cmd != 0 {
				w.acked = false
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nbd: sink: could not reconnect to %s within %v: %w", s.target, s.opts.ReconnectTimeout, cause)
		}
		if err := sleepCtx(ctx, s.backoff(attempt)); err != nil {
			return err
		}
		c, err := DialTarget(ctx, s.target, s.opts.Options)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			cause = err
			continue
		}
		if c.Size() != s.size || c.info.minBlock != s.client.info.minBlock {
			c.Close()
			return fmt.Errorf("nbd: sink: export changed across reconnect (size %d, was %d)", c.Size(), s.size)
		}
		if err := checkSinkTarget(c); err != nil {
			c.Close()
			return err
		}
		s.client = c
		s.reconnects++
		if err := s.resendAll(ctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ne *Error
			if errors.As(err, &ne) {
				return err
			}
			cause = err
			continue
		}
		return nil
	}
}

// resendAll sends every pending write on the new connection, in order,
// waiting for overlapping writes in flight first. It does not recover by
// itself: a failure goes back to recover's loop.
func (s *Sink) resendAll(ctx context.Context) error {
	for _, w := range s.pending {
		if w.acked {
			continue
		}
		for i := 0; i < len(s.inflight); i++ {
			x := s.inflight[i]
			if !overlaps(x, w) {
				continue
			}
			if err := x.cn.wait(ctx, x.r); err != nil {
				var ne *Error
				if errors.As(err, &ne) {
					x.tries++
					if x.tries > s.opts.Retries {
						return fmt.Errorf("nbd: sink: giving up after %d attempts: %w", x.tries, err)
					}
					// Not wrapped: recover reconnects and resends.
					return fmt.Errorf("nbd: sink: resent write failed: %v", err)
				}
				return err
			}
			s.acked(x)
			i--
		}
		cn := s.client.pick()
		r := &request{cmd: w.cmd, off: w.off, length: uint32(w.n)}
		if err := cn.start(ctx, r, w.flags, w.data); err != nil {
			return err
		}
		w.cn, w.r = cn, r
		s.inflight = append(s.inflight, w)
	}
	return nil
}
