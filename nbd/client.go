package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure [Dial]. The zero value works.
type Options struct {
	// Timeout bounds every operation: the handshake, sending a request and
	// waiting for its reply. A server that does not answer within it is
	// deemed dead and the connection fails with ErrDisconnected.
	// Default 60s; negative disables.
	Timeout time.Duration
	// TLSConfig, when set, makes the client use NBD_OPT_STARTTLS even for
	// nbd:// URIs; nbds:// URIs use it (or a default config) always. The
	// ServerName defaults to the URI's host.
	TLSConfig *tls.Config
	// MetaContexts are queried with NBD_OPT_SET_META_CONTEXT, e.g.
	// "base:allocation" or "qemu:dirty-bitmap:backup0", for BlockStatus.
	MetaContexts []string
	// NoStructuredReplies disables NBD_OPT_STRUCTURED_REPLY (for tests).
	NoStructuredReplies bool
	// Connections is the number of connections opened when the export
	// advertises CAN_MULTI_CONN (otherwise one). Default 4, maximum 16.
	Connections int
	// MaxInFlight is the number of requests in flight per connection.
	// Default 64 (nbdcopy's depth), maximum 1024.
	MaxInFlight int
	// RequestSize is the size reads and writes are split into, rounded to
	// the export's block size and capped by its maximum payload.
	// Default 256 KiB: on loopback, more requests of this size beat fewer large ones.
	RequestSize int
	// Dialer opens the transport; default a net.Dialer.
	Dialer func(ctx context.Context, network, address string) (net.Conn, error)

	infoOnly bool // Info: NBD_OPT_INFO, then abort
}

// ExportInfo describes an export, as [Info] learns it with NBD_OPT_INFO.
type ExportInfo struct {
	Size  int64
	Flags uint16 // FlagReadOnly, FlagSendFlush, ...
	// Block size constraints (1, 4096 and 32 MiB when the server states
	// none).
	MinimumBlock, PreferredBlock, MaxPayload int
	// StructuredReplies and MetaContexts are what the server agreed to.
	StructuredReplies bool
	MetaContexts      []string
}

// Info asks the server about an export with NBD_OPT_INFO, without entering
// the transmission phase, and disconnects.
func Info(ctx context.Context, uri string, o Options) (ExportInfo, error) {
	t, err := ParseURI(uri)
	if err != nil {
		return ExportInfo{}, err
	}
	o.setDefaults()
	o.infoOnly = true
	c := &Client{target: t, opts: o}
	_, info, err := c.dialOne(ctx)
	if err != nil {
		return ExportInfo{}, err
	}
	ei := ExportInfo{Size: info.size, Flags: info.flags, MinimumBlock: int(info.minBlock),
		PreferredBlock: int(info.prefBlock), MaxPayload: int(info.maxPayload), StructuredReplies: info.structured}
	for n := range info.contexts {
		ei.MetaContexts = append(ei.MetaContexts, n)
	}
	return ei, nil
}

func (o *Options) setDefaults() {
	if o.Timeout == 0 {
		o.Timeout = 60 * time.Second
	} else if o.Timeout < 0 {
		o.Timeout = 0
	}
	if o.Connections <= 0 {
		o.Connections = 4
	}
	o.Connections = min(o.Connections, 16)
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 64
	}
	o.MaxInFlight = min(o.MaxInFlight, 1024)
	if o.RequestSize <= 0 {
		o.RequestSize = 256 << 10
	}
	if o.Dialer == nil {
		var d net.Dialer
		o.Dialer = d.DialContext
	}
}

// A Client is a connection (or, with CAN_MULTI_CONN, several) to one NBD
// export. Its methods are safe for concurrent use; requests from several
// goroutines are pipelined.
type Client struct {
	target Target
	opts   Options
	info   *exportInfo
	conns  []*conn
	next   atomic.Uint32
	reqLen int64

	closeOnce sync.Once
}

// A BlockExtent is one extent of a BlockStatus answer.
type BlockExtent struct {
	Offset, Length int64
	// Flags are the context's status bits: for base:allocation StateHole
	// and StateZero, for qemu:dirty-bitmap:* bit 0 means dirty.
	Flags uint32
}

// Dial connects to the export the URI names (see [ParseURI]) and negotiates
// structured replies, meta contexts and the export with NBD_OPT_GO. It opens
// up to o.Connections connections if the export allows multi-conn.
func Dial(ctx context.Context, uri string, o Options) (*Client, error) {
	t, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	return DialTarget(ctx, t, o)
}

// DialTarget is [Dial] with a parsed target.
func DialTarget(ctx context.Context, t Target, o Options) (*Client, error) {
	o.setDefaults()
	c := &Client{target: t, opts: o}
	first, info, err := c.dialOne(ctx)
	if err != nil {
		return nil, err
	}
	c.info = info
	c.conns = append(c.conns, first)
	if info.flags&FlagCanMultiConn != 0 {
		for len(c.conns) < o.Connections {
			cn, info2, err := c.dialOne(ctx)
			if err != nil {
				break // one connection is enough to work
			}
			if info2.size != info.size || info2.flags != info.flags || info2.structured != info.structured {
				cn.close()
				break
			}
			c.conns = append(c.conns, cn)
		}
	}
	rs := int64(o.RequestSize)
	rs = min(rs, int64(info.maxPayload))
	rs -= rs % int64(info.minBlock)
	if rs <= 0 {
		rs = int64(info.minBlock)
	}
	c.reqLen = rs
	return c, nil
}

func (c *Client) dialOne(ctx context.Context) (*conn, *exportInfo, error) {
	if c.opts.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.opts.Timeout)
		defer cancel()
	}
	nc, err := c.opts.Dialer(ctx, c.target.Network, c.target.Address)
	if err != nil {
		return nil, nil, fmt.Errorf("nbd: dialing %s: %w", c.target, err)
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	if d, ok := ctx.Deadline(); ok {
		nc.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	tnc, info, err := handshake(nc, c.target, &c.opts)
	if !stop() || ctx.Err() != nil {
		nc.Close()
		if err == nil {
			err = ctx.Err()
		}
		return nil, nil, fmt.Errorf("nbd: handshake with %s: %w", c.target, errors.Join(ctx.Err(), err))
	}
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("nbd: handshake with %s: %w", c.target, err)
	}
	if c.opts.infoOnly {
		tnc.Close()
		return nil, info, nil
	}
	tnc.SetDeadline(time.Time{})
	return newConn(tnc, info, &c.opts), info, nil
}

// Size returns the export's size in bytes.
func (c *Client) Size() int64 { return c.info.size }

// Flags returns the export's transmission flags (FlagReadOnly, ...).
func (c *Client) Flags() uint16 { return c.info.flags }

// BlockSizes returns the export's block size constraints: minimum,
// preferred and maximum payload (1, 4096 and 32 MiB when it stated none).
func (c *Client) BlockSizes() (minimum, preferred, maxPayload int) {
	return int(c.info.minBlock), int(c.info.prefBlock), int(c.info.maxPayload)
}

// StructuredReplies reports whether structured replies were negotiated.
func (c *Client) StructuredReplies() bool { return c.info.structured }

// MetaContexts returns the meta contexts the server agreed to.
func (c *Client) MetaContexts() []string {
	var s []string
	for n := range c.info.contexts {
		s = append(s, n)
	}
	return s
}

// Connections returns the number of connections in use.
func (c *Client) Connections() int { return len(c.conns) }

// Close sends NBD_CMD_DISC on every connection, lets the server answer the
// requests in flight and close (for a few seconds at most), and closes.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		var wg sync.WaitGroup
		for _, cn := range c.conns {
			wg.Add(1)
			go func() { defer wg.Done(); cn.disconnect() }()
		}
		wg.Wait()
	})
	return nil
}

// pick returns the connection with the fewest requests in flight.
func (c *Client) pick() *conn {
	if len(c.conns) == 1 {
		return c.conns[0]
	}
	start := int(c.next.Add(1))
	best := c.conns[start%len(c.conns)]
	for i := range c.conns {
		cn := c.conns[(start+i)%len(c.conns)]
		if len(cn.sem) < len(best.sem) {
			best = cn
		}
	}
	return best
}

// err returns the first connection failure, if any.
func (c *Client) err() error {
	for _, cn := range c.conns {
		if err := cn.failed(); err != nil {
			return err
		}
	}
	return nil
}

// Err returns nil while every connection is healthy, or the error that
// broke one (wrapping ErrDisconnected or ErrProtocol).
func (c *Client) Err() error { return c.err() }

func (c *Client) check(cmd uint16, off, length int64, flags uint16) error {
	need := uint16(0)
	switch cmd {
	case cmdWrite, cmdTrim, cmdWriteZeroes:
		if c.info.flags&FlagReadOnly != 0 {
			return fmt.Errorf("nbd: %s: export is read-only: %w", cmdName(cmd), ErrUnsupported)
		}
		if cmd == cmdTrim {
			need = FlagSendTrim
		} else if cmd == cmdWriteZeroes {
			need = FlagSendWriteZeroes
		}
	case cmdFlush:
		need = FlagSendFlush
	}
	if flags&cmdFlagFUA != 0 && c.info.flags&FlagSendFUA == 0 {
		return fmt.Errorf("nbd: FUA: %w", ErrUnsupported)
	}
	if need != 0 && c.info.flags&need == 0 {
		return fmt.Errorf("nbd: %s: %w", cmdName(cmd), ErrUnsupported)
	}
	if cmd == cmdFlush {
		return nil
	}
	if off < 0 || length < 0 || off > c.info.size || length > c.info.size-off {
		return fmt.Errorf("nbd: %s at %d+%d is outside the export of %d bytes", cmdName(cmd), off, length, c.info.size)
	}
	if mb := int64(c.info.minBlock); mb > 1 && (off%mb != 0 || length%mb != 0) {
		return fmt.Errorf("nbd: %s at %d+%d is not aligned to the export's %d-byte blocks", cmdName(cmd), off, length, mb)
	}
	return nil
}

// do runs requests for [off, off+length) split into pieces of at most step
// bytes, all in flight at once, and waits for all of them.
func (c *Client) do(ctx context.Context, cmd uint16, flags uint16, p []byte, off, length, step int64) error {
	if err := c.check(cmd, off, length, flags); err != nil {
		return err
	}
	type sent struct {
		cn *conn
		r  *request
	}
	var reqs []sent
	var firstErr error
	for pos := int64(0); pos < length || (length == 0 && pos == 0 && cmd == cmdFlush); pos += step {
		n := min(step, length-pos)
		r := &request{cmd: cmd, off: off + pos, length: uint32(n)}
		var payload []byte
		if cmd == cmdRead {
			r.dst = p[pos : pos+n]
		} else if cmd == cmdWrite {
			payload = p[pos : pos+n]
		}
		cn := c.pick()
		if err := cn.start(ctx, r, flags, payload); err != nil {
			firstErr = err
			break
		}
		reqs = append(reqs, sent{cn, r})
		if cmd == cmdFlush {
			break
		}
	}
	for _, s := range reqs {
		if err := s.cn.wait(ctx, s.r); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// ReadAt reads len(p) bytes at off. Holes in structured replies read as
// zeroes.
func (c *Client) ReadAt(ctx context.Context, p []byte, off int64) error {
	return c.do(ctx, cmdRead, 0, p, off, int64(len(p)), c.reqLen)
}

// A CmdFlag modifies a command.
type CmdFlag uint16

// Command flags.
const (
	// FUA (force unit access): the write is durable when it is acknowledged.
	FUA = CmdFlag(cmdFlagFUA)
	// NoHole asks WriteZeroes to allocate rather than punch a hole.
	NoHole = CmdFlag(cmdFlagNoHole)
)

func joinFlags(fs []CmdFlag) uint16 {
	var f uint16
	for _, x := range fs {
		f |= uint16(x)
	}
	return f
}

// WriteAt writes p at off, split into requests of the client's request size.
func (c *Client) WriteAt(ctx context.Context, p []byte, off int64, flags ...CmdFlag) error {
	return c.do(ctx, cmdWrite, joinFlags(flags)&cmdFlagFUA, p, off, int64(len(p)), c.reqLen)
}

// Flush makes every write that completed before it durable.
func (c *Client) Flush(ctx context.Context) error {
	if len(c.conns) == 1 || c.info.flags&FlagCanMultiConn == 0 {
		return c.do(ctx, cmdFlush, 0, nil, 0, 0, 1)
	}
	// With multi-conn a flush on one connection covers writes completed on
	// all; flush on one, as nbdcopy does.
	if err := c.check(cmdFlush, 0, 0, 0); err != nil {
		return err
	}
	cn := c.pick()
	r := &request{cmd: cmdFlush}
	if err := cn.start(ctx, r, 0, nil); err != nil {
		return err
	}
	return cn.wait(ctx, r)
}

// splitLen is the longest TRIM/WRITE_ZEROES/BLOCK_STATUS request: below
// 4 GiB and aligned to the block size.
func (c *Client) splitLen() int64 {
	return maxLength - maxLength%int64(c.info.minBlock)
}

// Trim tells the server the range is no longer needed (it may punch a hole).
func (c *Client) Trim(ctx context.Context, off, length int64, flags ...CmdFlag) error {
	return c.do(ctx, cmdTrim, joinFlags(flags)&cmdFlagFUA, nil, off, length, c.splitLen())
}

// WriteZeroes writes zeroes to the range; with NoHole the server must
// allocate them rather than punch a hole.
func (c *Client) WriteZeroes(ctx context.Context, off, length int64, flags ...CmdFlag) error {
	return c.do(ctx, cmdWriteZeroes, joinFlags(flags)&(cmdFlagFUA|cmdFlagNoHole), nil, off, length, c.splitLen())
}

// BlockStatus returns the status of [off, off+length) in the named meta
// context (which must have been negotiated via Options.MetaContexts), as
// contiguous extents covering the range exactly.
func (c *Client) BlockStatus(ctx context.Context, metaContext string, off, length int64) ([]BlockExtent, error) {
	id, ok := c.info.contexts[metaContext]
	if !ok {
		return nil, fmt.Errorf("nbd: meta context %q was not negotiated: %w", metaContext, ErrUnsupported)
	}
	if err := c.check(cmdBlockStatus, off, length, 0); err != nil {
		return nil, err
	}
	var out []BlockExtent
	end := off + length
	for pos := off; pos < end; {
		n := min(end-pos, c.splitLen())
		r := &request{cmd: cmdBlockStatus, off: pos, length: uint32(n), ctxID: id}
		cn := c.pick()
		if err := cn.start(ctx, r, 0, nil); err != nil {
			return out, err
		}
		if err := cn.wait(ctx, r); err != nil {
			return out, err
		}
		for _, e := range r.status {
			if e.Offset >= end {
				break
			}
			e.Length = min(e.Length, end-e.Offset)
			if k := len(out); k > 0 && out[k-1].Flags == e.Flags && out[k-1].Offset+out[k-1].Length == e.Offset {
				out[k-1].Length += e.Length
			} else {
				out = append(out, e)
			}
			pos = e.Offset + e.Length
		}
	}
	return out, nil
}
