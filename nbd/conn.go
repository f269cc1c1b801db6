package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// A conn is one transmission-phase connection. Requests are sent by the
// caller's goroutine under wmu; one reader goroutine reads every reply and
// completes the request its cookie names, in whatever order they come.
type conn struct {
	nc         net.Conn
	br         *bufio.Reader
	structured bool
	timeout    time.Duration
	contexts   map[uint32]string // meta context id -> name

	wmu sync.Mutex
	hdr [requestHeaderLen]byte

	sem chan struct{} // one token per request in flight

	mu     sync.Mutex
	reqs   map[uint64]*request
	cookie uint64
	err    error // sticky: set once the connection failed
	dead   chan struct{}
}

// A request is one NBD command in flight.
type request struct {
	cmd    uint16
	off    int64
	length uint32

	// mu guards dst and abandoned: the reader fills dst under mu, and a
	// caller who gives up sets abandoned so that dst is never touched after
	// it returned.
	mu        sync.Mutex
	dst       []byte
	abandoned bool
	covered   int64 // bytes of a structured read received so far

	status []BlockExtent // block status descriptors (for the first context)
	ctxID  uint32

	err  error // first server error (*Error) or protocol/connection error
	done chan struct{}
}

func newConn(nc net.Conn, info *exportInfo, o *Options) *conn {
	c := &conn{
		nc:         nc,
		br:         bufio.NewReaderSize(nc, 256<<10),
		structured: info.structured,
		timeout:    o.Timeout,
		sem:        make(chan struct{}, o.MaxInFlight),
		reqs:       map[uint64]*request{},
		dead:       make(chan struct{}),
		contexts:   map[uint32]string{},
	}
	for name, id := range info.contexts {
		c.contexts[id] = name
	}
	go c.readLoop()
	return c
}

// fail marks the connection dead, closes it and fails every request in
// flight with err.
func (c *conn) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	reqs := c.reqs
	c.reqs = map[uint64]*request{}
	close(c.dead)
	c.mu.Unlock()
	c.nc.Close()
	for _, r := range reqs {
		r.complete(err)
		<-c.sem
	}
}

func (c *conn) failed() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (r *request) complete(err error) {
	r.setErr(err)
	close(r.done)
}

func (r *request) setErr(err error) {
	r.mu.Lock()
	if r.err == nil {
		r.err = err
	}
	r.mu.Unlock()
}

// start sends a request; payload is sent with it for WRITE. It returns once
// the request is on the wire (payload is no longer referenced) or failed.
func (c *conn) start(ctx context.Context, r *request, flags uint16, payload []byte) error {
	r.done = make(chan struct{})
	select {
	case c.sem <- struct{}{}:
	default:
		// Every slot is taken: wait for a reply, but not forever, even if
		// nobody waits on the requests in flight (a Sink's pipeline).
		var timer <-chan time.Time
		if c.timeout > 0 {
			t := time.NewTimer(c.timeout)
			defer t.Stop()
			timer = t.C
		}
		select {
		case c.sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.dead:
			return c.failed()
		case <-timer:
			err := fmt.Errorf("%w: no reply to any of %d requests within %v", ErrDisconnected, cap(c.sem), c.timeout)
			c.fail(err)
			return err
		}
	}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		<-c.sem
		return c.err
	}
	c.cookie++
	cookie := c.cookie
	c.reqs[cookie] = r
	c.mu.Unlock()

	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := ctx.Err(); err != nil {
		// Not sent: forget it.
		c.mu.Lock()
		if _, ok := c.reqs[cookie]; ok {
			delete(c.reqs, cookie)
			<-c.sem
		}
		c.mu.Unlock()
		return err
	}
	putRequest(c.hdr[:], flags, r.cmd, cookie, uint64(r.off), r.length)
	if c.timeout > 0 {
		c.nc.SetWriteDeadline(time.Now().Add(c.timeout))
	}
	var err error
	if len(payload) > 0 {
		bufs := net.Buffers{c.hdr[:], payload}
		_, err = bufs.WriteTo(c.nc)
	} else {
		_, err = c.nc.Write(c.hdr[:])
	}
	if err != nil {
		err = fmt.Errorf("%w: sending %s: %v", ErrDisconnected, cmdName(r.cmd), err)
		c.fail(err)
		return err
	}
	return nil
}

// wait waits for the reply. When ctx ends first the request is abandoned
// (its reply will be read and dropped); when the operation timeout passes,
// the server is deemed dead and the connection is failed.
func (c *conn) wait(ctx context.Context, r *request) error {
	var timer <-chan time.Time
	if c.timeout > 0 {
		t := time.NewTimer(c.timeout)
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		r.mu.Lock()
		r.abandoned = true
		r.dst = nil
		r.mu.Unlock()
		select {
		case <-r.done:
			return r.err
		default:
		}
		return ctx.Err()
	case <-timer:
		err := fmt.Errorf("%w: no reply to %s at %d+%d within %v", ErrDisconnected, cmdName(r.cmd), r.off, r.length, c.timeout)
		c.fail(err)
		<-r.done
		return err
	}
}

func (c *conn) close() {
	c.fail(ErrClosed)
}

// disconnect sends NBD_CMD_DISC (which has no reply) and closes.
//
// Closing a socket with unread replies in it makes the kernel send a RST,
// which can discard requests the server has not read yet; so once DISC is
// sent the write side is shut and the replies are read until the server
// closes (bounded by a few seconds and the timeout).
func (c *conn) disconnect() {
	if c.failed() == nil {
		c.wmu.Lock()
		putRequest(c.hdr[:], 0, cmdDisc, 0, 0, 0)
		c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		_, err := c.nc.Write(c.hdr[:])
		c.wmu.Unlock()
		if cw, ok := c.nc.(interface{ CloseWrite() error }); ok && err == nil && cw.CloseWrite() == nil {
			wait := 5 * time.Second
			if c.timeout > 0 {
				wait = min(wait, c.timeout)
			}
			t := time.NewTimer(wait)
			select {
			case <-c.dead: // the server closed after answering
			case <-t.C:
			}
			t.Stop()
		}
	}
	c.fail(ErrClosed)
}

func (c *conn) readLoop() {
	for {
		if err := c.readReply(); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) {
				err = fmt.Errorf("%w: %v", ErrDisconnected, err)
			} else if !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrDisconnected) {
				err = fmt.Errorf("%w: %v", ErrDisconnected, err)
			}
			c.fail(err)
			return
		}
	}
}

// lookup finds the request a reply names.
func (c *conn) lookup(cookie uint64) (*request, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.reqs[cookie]
	if !ok {
		return nil, protoErr("reply with unknown cookie %#x", cookie)
	}
	return r, nil
}

func (c *conn) finish(cookie uint64, r *request, err error) {
	c.mu.Lock()
	_, ok := c.reqs[cookie]
	delete(c.reqs, cookie)
	c.mu.Unlock()
	if !ok {
		return // failed meanwhile
	}
	r.complete(err)
	<-c.sem
}

func (c *conn) readReply() error {
	var hdr [structuredHeaderLen]byte
	if _, err := io.ReadFull(c.br, hdr[:4]); err != nil {
		return err
	}
	switch be.Uint32(hdr[:]) {
	case magicSimple:
		if _, err := io.ReadFull(c.br, hdr[4:simpleReplyLen]); err != nil {
			return err
		}
		errno := be.Uint32(hdr[4:])
		cookie := be.Uint64(hdr[8:])
		r, err := c.lookup(cookie)
		if err != nil {
			return err
		}
		if errno != 0 {
			c.finish(cookie, r, &Error{Op: cmdName(r.cmd), Offset: r.off, Length: int64(r.length), Errno: errno})
			return nil
		}
		if r.cmd == cmdRead {
			if err := c.readData(r, 0, int(r.length)); err != nil {
				return err
			}
		}
		if r.cmd == cmdBlockStatus {
			return protoErr("simple reply to block status")
		}
		c.finish(cookie, r, nil)
		return nil
	case magicStructure:
		if !c.structured {
			return protoErr("structured reply without negotiation")
		}
		if _, err := io.ReadFull(c.br, hdr[4:structuredHeaderLen]); err != nil {
			return err
		}
		return c.readChunk(be.Uint16(hdr[4:]), be.Uint16(hdr[6:]), be.Uint64(hdr[8:]), be.Uint32(hdr[16:]))
	default:
		return protoErr("reply magic %#x", be.Uint32(hdr[:]))
	}
}

// readData reads n bytes of read data into dst[at:] unless the request was
// abandoned, in which case it discards them.
func (c *conn) readData(r *request, at, n int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.abandoned || r.dst == nil {
		_, err := c.br.Discard(n)
		return err
	}
	_, err := io.ReadFull(c.br, r.dst[at:at+n])
	return err
}

func (c *conn) readChunk(flags, typ uint16, cookie uint64, length uint32) error {
	r, err := c.lookup(cookie)
	if err != nil {
		return err
	}
	if flags&^replyFlagDone != 0 {
		return protoErr("unknown reply flags %#x", flags)
	}
	done := flags&replyFlagDone != 0
	switch typ {
	case chunkNone:
		if length != 0 || !done {
			return protoErr("NBD_REPLY_TYPE_NONE with length %d, flags %#x", length, flags)
		}
	case chunkOffsetData:
		if r.cmd != cmdRead || length <= 8 {
			return protoErr("data chunk of %d bytes for %s", length, cmdName(r.cmd))
		}
		var b [8]byte
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return err
		}
		off, n := be.Uint64(b[:]), uint64(length-8)
		if err := r.within(off, n); err != nil {
			return err
		}
		if err := c.readData(r, int(int64(off)-r.off), int(n)); err != nil {
			return err
		}
		r.covered += int64(n)
	case chunkOffsetHole:
		if r.cmd != cmdRead || length != 12 {
			return protoErr("hole chunk of %d bytes for %s", length, cmdName(r.cmd))
		}
		var b [12]byte
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return err
		}
		off, n := be.Uint64(b[:]), uint64(be.Uint32(b[8:]))
		if n == 0 {
			return protoErr("empty hole chunk")
		}
		if err := r.within(off, n); err != nil {
			return err
		}
		r.mu.Lock()
		if !r.abandoned && r.dst != nil {
			clear(r.dst[int64(off)-r.off : int64(off)-r.off+int64(n)])
		}
		r.mu.Unlock()
		r.covered += int64(n)
	case chunkBlockStatus:
		if r.cmd != cmdBlockStatus || length < 12 || (length-4)%8 != 0 || length > maxChunkMeta {
			return protoErr("block status chunk of %d bytes for %s", length, cmdName(r.cmd))
		}
		b := make([]byte, length)
		if _, err := io.ReadFull(c.br, b); err != nil {
			return err
		}
		id := be.Uint32(b)
		if _, ok := c.contexts[id]; !ok {
			return protoErr("block status for unnegotiated context %d", id)
		}
		if id == r.ctxID && r.status == nil {
			off := r.off
			for p := b[4:]; len(p) >= 8; p = p[8:] {
				n := int64(be.Uint32(p))
				if n == 0 {
					return protoErr("empty block status extent")
				}
				r.status = append(r.status, BlockExtent{Offset: off, Length: n, Flags: be.Uint32(p[4:])})
				off += n
			}
		}
	default:
		if typ&chunkErrBit == 0 {
			return protoErr("unknown reply chunk type %d", typ)
		}
		if length < 6 || length > maxChunkMeta {
			return protoErr("error chunk of %d bytes", length)
		}
		b := make([]byte, length)
		if _, err := io.ReadFull(c.br, b); err != nil {
			return err
		}
		errno := be.Uint32(b)
		msgLen := uint32(be.Uint16(b[4:]))
		if msgLen > length-6 {
			return protoErr("error message of %d bytes in a chunk of %d", msgLen, length)
		}
		if errno == 0 {
			return protoErr("error chunk with error value 0")
		}
		e := &Error{Op: cmdName(r.cmd), Offset: r.off, Length: int64(r.length), Errno: errno, Message: string(b[6 : 6+msgLen])}
		if typ == chunkErrorOffset {
			if length-6-msgLen != 8 {
				return protoErr("offset error chunk of %d bytes", length)
			}
			off := be.Uint64(b[6+msgLen:])
			if err := r.within(off, 1); err != nil {
				return err
			}
			e.Offset = int64(off)
		}
		r.setErr(e)
	}
	if !done {
		return nil
	}
	var ferr error
	r.mu.Lock()
	failed := r.err != nil
	r.mu.Unlock()
	if !failed {
		switch r.cmd {
		case cmdRead:
			if r.covered != int64(r.length) {
				ferr = protoErr("read of %d bytes answered with %d", r.length, r.covered)
			}
		case cmdBlockStatus:
			if r.status == nil {
				ferr = protoErr("block status reply without extents")
			}
		}
	}
	c.finish(cookie, r, ferr)
	if ferr != nil {
		return ferr
	}
	return nil
}

// within checks that [off, off+n) lies inside the request, and that a read
// is not covered more than once in total.
func (r *request) within(off, n uint64) error {
	start, end := uint64(r.off), uint64(r.off)+uint64(r.length)
	if off < start || n > end-start || off > end-n {
		return protoErr("chunk %d+%d outside request %d+%d", off, n, r.off, r.length)
	}
	if r.covered+int64(n) > int64(r.length) {
		return protoErr("chunks cover more than the %d bytes requested", r.length)
	}
	return nil
}
