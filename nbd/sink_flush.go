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
			// A recovery resent writes, or a cancelled WriteAt left some
			// unsent: send them, then look again.
			for _, w := range s.pending {
				if !w.acked && w.r == nil {
					if err := s.send(ctx, w, nil); err != nil {
						return err
					}
				}
			}
			continue
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
	s.flushed(f.n)
	return nil
}

// flushed moves pending[:n], which a successful FLUSH covered, to the
// durable set and reports them.
func (s *Sink) flushed(n int) {
	var done []Extent
	var fresh extentSet
	for _, w := range s.pending[:n] {
		s.buffered -= int64(len(w.data))
		s.unflushed -= w.payloadLen()
		s.release(w)
		fresh.add(w.off, w.n)
	}
	// A later pending write over the same blocks supersedes the flushed
	// data: those blocks are not durable yet.
	for _, w := range s.pending[n:] {
		fresh.remove(w.off, w.n)
	}
	for _, e := range fresh {
		s.durable.add(e.Offset, e.Length)
		done = append(done, e)
	}
	clear(s.pending[:n])
	s.pending = s.pending[n:]
	if len(s.pending) == 0 {
		s.pending = nil
	}
	if s.opts.OnDurable != nil && len(done) > 0 {
		s.opts.OnDurable(done)
	}
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
		if err := s.send(ctx, w, nil); err != nil {
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
			return fmt.Errorf("nbd: sink: could not reconnect to %s within %v: %w (last error: %w)", s.target, s.opts.ReconnectTimeout, ErrDisconnected, cause)
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

// resendAll sends every pending write on the new connection, in order, in
// batches of at most MaxUnflushed/8 bytes, each made durable with a FLUSH
// before the next: a link that breaks every few megabytes still makes
// progress. It does not recover by itself: a failure goes back to
// recover's loop, which reconnects.
func (s *Sink) resendAll(ctx context.Context) error {
	batch := max(s.opts.MaxUnflushed/8, 1)
	for len(s.pending) > 0 {
		n, bytes := 0, int64(0)
		for n < len(s.pending) && (n == 0 || bytes+s.pending[n].payloadLen() <= batch) {
			bytes += s.pending[n].payloadLen()
			n++
		}
		for _, w := range s.pending[:n] {
			if w.acked {
				continue
			}
			if err := s.waitOverlapping(ctx, w); err != nil {
				return err
			}
			if err := s.sendRaw(ctx, w); err != nil {
				return err
			}
		}
		for len(s.inflight) > 0 {
			if err := s.settle(ctx, s.inflight[0]); err != nil {
				return err
			}
		}
		cn := s.client.pick()
		r := &request{cmd: cmdFlush}
		if err := cn.start(ctx, r, 0, nil); err != nil {
			return err
		}
		if err := cn.wait(ctx, r); err != nil {
			for _, w := range s.pending[:n] {
				if err := s.retryable(w, err); err != nil {
					return err
				}
			}
			return fmt.Errorf("nbd: sink: flush after reconnect failed: %v", err)
		}
		s.flushed(n)
	}
	return nil
}

// retryable decides what a failed reply means during a resend: a server
// error within the retry budget and a broken connection return a plain
// error (recover reconnects and tries again); a server error beyond the
// budget returns an *Error chain, which recover gives up on.
func (s *Sink) retryable(w *sinkWrite, err error) error {
	var ne *Error
	if !errors.As(err, &ne) {
		return err
	}
	w.tries++
	if w.tries > s.opts.Retries {
		return fmt.Errorf("nbd: sink: giving up after %d attempts: %w", w.tries, err)
	}
	return nil
}

func (s *Sink) waitOverlapping(ctx context.Context, w *sinkWrite) error {
	for i := 0; i < len(s.inflight); i++ {
		x := s.inflight[i]
		if !overlaps(x, w) {
			continue
		}
		// A failed older write is sent again, before w.
		if err := s.settle(ctx, x); err != nil {
			return err
		}
		i = -1
	}
	return nil
}

// settle waits for the reply to x during a resend: acknowledged, x leaves
// the in-flight list; failed within the retry budget, it is sent again
// (and is in flight once more, at the end of the list).
func (s *Sink) settle(ctx context.Context, x *sinkWrite) error {
	if err := x.cn.wait(ctx, x.r); err != nil {
		if err := s.retryable(x, err); err != nil {
			return err
		}
		s.dropInflight(x)
		return s.sendRaw(ctx, x)
	}
	s.acked(x)
	return nil
}

func (s *Sink) sendRaw(ctx context.Context, w *sinkWrite) error {
	if w.cmd == 0 {
		w.acked = true
		return nil
	}
	payload, release, err := s.payload(w)
	if err != nil {
		return err
	}
	cn := s.client.pick()
	r := &request{cmd: w.cmd, off: w.off, length: uint32(w.n)}
	err = cn.start(ctx, r, w.flags, payload)
	release()
	if err != nil {
		return err
	}
	w.cn, w.r, w.acked = cn, r, false
	s.inflight = append(s.inflight, w)
	return nil
}

// payloadLen is the number of bytes w sends.
func (w *sinkWrite) payloadLen() int64 {
	if w.cmd == cmdWrite {
		return w.n
	}
	return 0
}
