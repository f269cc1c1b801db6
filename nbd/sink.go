package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// ZeroMode says what a [Sink] does with blocks that are all zeroes.
type ZeroMode int

const (
	// ZeroWrite sends NBD_CMD_WRITE_ZEROES, which the server may implement
	// by punching a hole (the default). Without WRITE_ZEROES support the
	// zeroes are written as data.
	ZeroWrite ZeroMode = iota
	// ZeroAllocate sends WRITE_ZEROES with NO_HOLE: the blocks stay
	// allocated.
	ZeroAllocate
	// ZeroTrim sends NBD_CMD_TRIM to keep the target sparse. TRIM is only a
	// hint: use it only for targets whose trimmed blocks read as zeroes
	// (sparse files behind qemu-nbd, nbdkit's file plugin, our Server).
	ZeroTrim
	// ZeroSkip sends nothing: the target must already read as zeroes (a
	// new sparse file). Skipped blocks count as durable at the next flush.
	ZeroSkip
)

// SinkOptions configure [NewSink]. The zero value works.
type SinkOptions struct {
	// Options are the client's (timeouts, TLS, connections...).
	Options
	// Zero is what happens to all-zero blocks. Default ZeroWrite.
	Zero ZeroMode
	// ZeroBlock is the granularity of zero detection, a multiple of the
	// export's minimum block size. Default 64 KiB.
	ZeroBlock int
	// MaxUnflushed bounds the memory that holds written but not yet
	// durable data (kept for resending after a reconnect). When half of
	// it is used the sink sends a FLUSH in the background; when all of it
	// is used WriteAt waits for that FLUSH. Default 256 MiB, minimum
	// 4 MiB.
	MaxUnflushed int64
	// Source, when set, is where the data written at each offset can be
	// read again (the device or snapshot being backed up). The sink then
	// keeps no copy of unflushed data and does not flush before Flush is
	// called, except every 4×MaxUnflushed bytes (in the background) to
	// bound its bookkeeping and what a reconnect must resend. A write to
	// resend is read back from Source, which must hold what WriteAt was
	// given.
	Source io.ReaderAt
	// OnDurable, when set, is called (with the sink's lock held, so it must
	// not call the sink) with the extents each successful FLUSH made
	// durable.
	OnDurable func([]Extent)
	// Retries is how often a write the server failed (EIO...) is sent
	// again before the sink gives up. Default 8.
	Retries int
	// ReconnectTimeout is how long the sink keeps reconnecting after the
	// connection broke before it gives up. Default 2 minutes.
	ReconnectTimeout time.Duration
	// BackoffMin and BackoffMax bound the exponential backoff between
	// reconnection attempts. Defaults 50 ms and 5 s.
	BackoffMin, BackoffMax time.Duration
}

func (o *SinkOptions) setDefaults() {
	if o.ZeroBlock <= 0 {
		o.ZeroBlock = 64 << 10
	}
	if o.MaxUnflushed <= 0 {
		o.MaxUnflushed = 256 << 20
	}
	o.MaxUnflushed = max(o.MaxUnflushed, 4<<20)
	if o.Retries <= 0 {
		o.Retries = 8
	}
	if o.ReconnectTimeout <= 0 {
		o.ReconnectTimeout = 2 * time.Minute
	}
	if o.BackoffMin <= 0 {
		o.BackoffMin = 50 * time.Millisecond
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = 5 * time.Second
	}
}

// A Sink writes a backup image to an NBD export and keeps it going over a
// bad network: writes are pipelined and kept in memory until a FLUSH covers
// them; when the connection breaks, the sink reconnects with backoff,
// renegotiates and sends again every write no successful FLUSH covered.
// Durable (and OnDurable) report exactly the extents a successful FLUSH
// covered.
//
// NBD has no fencing. When a connection breaks, the sink closes its socket
// (healthy sibling connections get NBD_CMD_DISC, and the sink waits, a few
// seconds at most, until the server closes them; our Server closes only
// after finishing the requests in flight, qemu-nbd at once), backs off at
// least BackoffMin, reconnects and resends. A write the server had already
// read from the broken connection may still be running then: qemu-nbd
// keeps executing such requests while it accepts the next connection (it
// drops requests still unread in the old socket). Such a stale write carries
// the data the sink resends for the same blocks, so it is harmless, unless
// the caller writes different data to those blocks after the reconnect
// (or had a newer write to them queued behind it): then the stale data can
// land last, after a FLUSH reported the newer data durable. A FLUSH does
// not prevent this: it covers completed writes only, on multi-conn
// exports too. Our [Server] orders overlapping writes across connections
// in the order it read them, which closes that window; with other servers
// the window is the server's I/O time against the backoff and handshake.
// Backups that rewrite blocks (converging copies) against other servers
// should verify the rewritten blocks after a reconnect ([Sink.Reconnects]
// tells); each block written once is never affected.
//
// A Sink is safe for concurrent use, but its calls are serialised.
type Sink struct {
	target Target
	opts   SinkOptions

	mu         sync.Mutex
	client     *Client
	size       int64
	pending    []*sinkWrite // not yet durable, in write order
	inflight   []*sinkWrite // sent, reply not yet handled
	buffered   int64        // bytes of data held by pending
	unflushed  int64        // bytes pending writes cover
	flushing   *sinkFlush   // a FLUSH in flight, if any
	durable    extentSet
	free       [][]byte // data buffers for reuse
	reconnects int
	err        error // sticky: the sink gave up
}

type sinkWrite struct {
	off, n int64
	cmd    uint16 // cmdWrite, cmdWriteZeroes, cmdTrim, or 0 for skipped zeroes
	flags  uint16
	data   []byte // a copy, unless it is read back from Source
	acked  bool
	tries  int
	cn     *conn
	r      *request
}

type sinkFlush struct {
	cn *conn
	r  *request
	n  int // it covers pending[:n]
}

// NewSink connects to the export the URI names.
func NewSink(ctx context.Context, uri string, o SinkOptions) (*Sink, error) {
	t, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	o.setDefaults()
	c, err := DialTarget(ctx, t, o.Options)
	if err != nil {
		return nil, err
	}
	if err := checkSinkTarget(c); err != nil {
		c.Close()
		return nil, err
	}
	mb := int(c.info.minBlock)
	if o.ZeroBlock%mb != 0 {
		o.ZeroBlock += mb - o.ZeroBlock%mb
	}
	return &Sink{target: t, opts: o, client: c, size: c.Size()}, nil
}

func checkSinkTarget(c *Client) error {
	if c.Flags()&FlagReadOnly != 0 {
		return fmt.Errorf("nbd: sink: export is read-only: %w", ErrUnsupported)
	}
	if c.Flags()&FlagSendFlush == 0 {
		// Without FLUSH nothing could ever be known to be durable.
		return fmt.Errorf("nbd: sink: export does not support FLUSH: %w", ErrUnsupported)
	}
	return nil
}

// Size returns the export's size.
func (s *Sink) Size() int64 { return s.size }

// Reconnects returns how many times the sink reconnected.
func (s *Sink) Reconnects() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reconnects
}

// Durable returns the extents whose latest data a successful FLUSH made
// durable, sorted and merged. An extent written again leaves the set until
// a FLUSH covers the new data.
func (s *Sink) Durable() []Extent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.durable.clone()
}

// Close waits (up to the timeout) for the replies to writes in flight and
// disconnects. Writes that no Flush covered are not durable: call Flush
// first.
func (s *Sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client != nil {
		for _, w := range s.inflight {
			w.cn.wait(context.Background(), w.r)
		}
		s.inflight = nil
		s.client.Close()
		s.client = nil
	}
	if s.err == nil {
		s.err = ErrClosed
	}
	return nil
}

// WriteAt writes p at off. It returns once the data is copied and sent (or
// queued); errors of the write itself that retries could not overcome are
// returned by a later call. off and len(p) must be multiples of the
// export's minimum block size.
func (s *Sink) WriteAt(ctx context.Context, p []byte, off int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	if off < 0 || off > s.size || int64(len(p)) > s.size-off {
		return fmt.Errorf("nbd: sink: write at %d+%d is outside the export of %d bytes", off, len(p), s.size)
	}
	if mb := int64(s.client.info.minBlock); off%mb != 0 || int64(len(p))%mb != 0 {
		return fmt.Errorf("nbd: sink: write at %d+%d is not aligned to the export's %d-byte blocks", off, len(p), mb)
	}
	s.durable.remove(off, int64(len(p)))
	zb := int64(s.opts.ZeroBlock)
	for pos := int64(0); pos < int64(len(p)); {
		// A run of blocks aligned to ZeroBlock that are all zero or all not.
		end := min(int64(len(p)), (off+pos)/zb*zb+zb-off)
		zero := isZero(p[pos:end])
		for end < int64(len(p)) {
			next := min(int64(len(p)), end+zb)
			if isZero(p[end:next]) != zero {
				break
			}
			end = next
		}
		var err error
		if zero {
			err = s.zeroes(ctx, off+pos, end-pos)
		} else {
			err = s.data(ctx, p[pos:end], off+pos)
		}
		if err != nil {
			return err
		}
		pos = end
	}
	if s.opts.Source == nil && s.buffered >= s.opts.MaxUnflushed/2 {
		return s.checkpoint(ctx, s.buffered >= s.opts.MaxUnflushed)
	}
	if s.opts.Source != nil && s.unflushed >= 4*s.opts.MaxUnflushed {
		return s.checkpoint(ctx, s.unflushed >= 8*s.opts.MaxUnflushed)
	}
	return nil
}

// WriteZeroes records that [off, off+length) is all zeroes (unused blocks a
// filesystem parser found, holes of the source) and handles it like zero
// blocks given to WriteAt, by the sink's ZeroMode, without reading or
// sending data.
func (s *Sink) WriteZeroes(ctx context.Context, off, length int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	if off < 0 || length < 0 || off > s.size || length > s.size-off {
		return fmt.Errorf("nbd: sink: zeroes at %d+%d are outside the export of %d bytes", off, length, s.size)
	}
	if mb := int64(s.client.info.minBlock); off%mb != 0 || length%mb != 0 {
		return fmt.Errorf("nbd: sink: zeroes at %d+%d are not aligned to the export's %d-byte blocks", off, length, mb)
	}
	s.durable.remove(off, length)
	return s.zeroes(ctx, off, length)
}

var zeroPage [64 << 10]byte

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroPage))
		if !bytes.Equal(b[:n], zeroPage[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

func (s *Sink) data(ctx context.Context, p []byte, off int64) error {
	step := s.client.reqLen
	for pos := int64(0); pos < int64(len(p)); pos += step {
		n := min(step, int64(len(p))-pos)
		if s.opts.Source != nil {
			w := &sinkWrite{off: off + pos, n: n, cmd: cmdWrite}
			s.pending = append(s.pending, w)
			s.unflushed += n
			if err := s.fail(s.send(ctx, w, p[pos:pos+n])); err != nil {
				return err
			}
			continue
		}
		buf := s.buffer(int(n))
		copy(buf, p[pos:pos+n])
		if err := s.add(ctx, &sinkWrite{off: off + pos, n: n, cmd: cmdWrite, data: buf}); err != nil {
			return err
		}
	}
	return nil
}

func (s *Sink) zeroes(ctx context.Context, off, n int64) error {
	cmd, flags := cmdWriteZeroes, uint16(0)
	switch s.opts.Zero {
	case ZeroAllocate:
		flags = cmdFlagNoHole
	case ZeroTrim:
		cmd = cmdTrim
	case ZeroSkip:
		cmd = 0
	}
	f := s.client.Flags()
	if (cmd == cmdTrim && f&FlagSendTrim == 0) || (cmd == cmdWriteZeroes && f&FlagSendWriteZeroes == 0) {
		// The export cannot zero: send zeroes as data, a request at a time.
		z := make([]byte, min(n, s.client.reqLen))
		for pos := int64(0); pos < n; pos += int64(len(z)) {
			if err := s.data(ctx, z[:min(int64(len(z)), n-pos)], off+pos); err != nil {
				return err
			}
		}
		return nil
	}
	limit := s.client.splitLen()
	for pos := int64(0); pos < n; pos += limit {
		w := &sinkWrite{off: off + pos, n: min(limit, n-pos), cmd: cmd, flags: flags}
		if err := s.add(ctx, w); err != nil {
			return err
		}
	}
	return nil
}

func (s *Sink) buffer(n int) []byte {
	if k := len(s.free); k > 0 && cap(s.free[k-1]) >= n {
		b := s.free[k-1][:n]
		s.free = s.free[:k-1]
		return b
	}
	return make([]byte, n, s.client.reqLen)
}

func (s *Sink) release(w *sinkWrite) {
	if w.data != nil && cap(w.data) == int(s.client.reqLen) && len(s.free) < 64 {
		s.free = append(s.free, w.data)
	}
	w.data = nil
}

// add queues a write and sends it.
func (s *Sink) add(ctx context.Context, w *sinkWrite) error {
	s.pending = append(s.pending, w)
	s.buffered += int64(len(w.data))
	s.unflushed += w.payloadLen()
	return s.fail(s.send(ctx, w, nil))
}

// fail makes an error sticky unless it is the caller's context.
func (s *Sink) fail(err error) error {
	if err != nil && s.err == nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		s.err = err
	}
	return err
}

func overlaps(a, b *sinkWrite) bool { return a.off < b.off+b.n && b.off < a.off+a.n }

// payload returns the data to send for w: its copy, or what Source holds;
// done releases it once sent.
func (s *Sink) payload(w *sinkWrite) (p []byte, done func(), err error) {
	if w.cmd != cmdWrite || w.data != nil {
		return w.data, func() {}, nil
	}
	buf := getBuf(int(w.n))
	if _, err := s.opts.Source.ReadAt(buf, w.off); err != nil && !(errors.Is(err, io.EOF) && w.off+w.n == s.size) {
		putBuf(buf)
		return nil, nil, fmt.Errorf("nbd: sink: reading %d+%d back from Source: %w", w.off, w.n, err)
	}
	return buf, func() { putBuf(buf) }, nil
}

// send sends w once no write in flight overlaps it (NBD does not order
// requests in flight). p is its payload for a first send from Source, nil
// otherwise.
func (s *Sink) send(ctx context.Context, w *sinkWrite, p []byte) error {
	for {
		if w.r != nil || w.acked {
			return nil // a recovery resent it
		}
		if w.cmd == 0 {
			w.acked = true
			return nil
		}
		var busy *sinkWrite
		for _, x := range s.inflight {
			if overlaps(x, w) {
				busy = x
				break
			}
		}
		if busy != nil {
			if err := s.await(ctx, busy); err != nil {
				return err
			}
			continue
		}
		s.reap(ctx)
		if w.r != nil || w.acked {
			return nil
		}
		payload, release := p, func() {}
		if payload == nil {
			var err error
			if payload, release, err = s.payload(w); err != nil {
				return err
			}
		}
		cn := s.client.pick()
		r := &request{cmd: w.cmd, off: w.off, length: uint32(w.n)}
		err := cn.start(ctx, r, w.flags, payload)
		release()
		if err == nil {
			w.cn, w.r = cn, r
			s.inflight = append(s.inflight, w)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := s.recover(ctx, err); err != nil {
			return err
		}
	}
}

// reap handles the replies that arrived, without blocking.
func (s *Sink) reap(ctx context.Context) {
	for i := 0; i < len(s.inflight); i++ {
		w := s.inflight[i]
		select {
		case <-w.r.done:
			if w.r.err == nil {
				s.acked(w)
				i--
			}
		default:
		}
	}
}

func (s *Sink) dropInflight(w *sinkWrite) {
	for i, x := range s.inflight {
		if x == w {
			s.inflight[i] = s.inflight[len(s.inflight)-1]
			s.inflight = s.inflight[:len(s.inflight)-1]
			return
		}
	}
}

func (s *Sink) acked(w *sinkWrite) {
	s.dropInflight(w)
	w.acked, w.cn, w.r = true, nil, nil
}

// await waits for w's reply and handles it: an acknowledgement, a server
// error (the write is sent again, up to Retries times) or a broken
// connection (recover).
func (s *Sink) await(ctx context.Context, w *sinkWrite) error {
	err := w.cn.wait(ctx, w.r)
	if err == nil {
		s.acked(w)
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ne *Error
	if errors.As(err, &ne) {
		s.dropInflight(w)
		w.cn, w.r = nil, nil
		w.tries++
		if w.tries > s.opts.Retries {
			return fmt.Errorf("nbd: sink: giving up after %d attempts: %w", w.tries, err)
		}
		if err := sleepCtx(ctx, s.backoff(w.tries)); err != nil {
			return err
		}
		return s.send(ctx, w, nil)
	}
	return s.recover(ctx, err)
}

func (s *Sink) backoff(attempt int) time.Duration {
	d := s.opts.BackoffMin
	for i := 1; i < attempt && d < s.opts.BackoffMax; i++ {
		d *= 2
	}
	return min(d, s.opts.BackoffMax)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
