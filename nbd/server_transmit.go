package nbd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
)

// transmit reads requests in one goroutine and handles each in a worker;
// replies are written whole under wmu, in completion order.
func (sc *serverConn) transmit() error {
	br := bufio.NewReaderSize(sc.nc, 256<<10)
	sem := make(chan struct{}, sc.workers)
	var wg sync.WaitGroup
	defer wg.Wait()
	var wmu sync.Mutex
	var werr error
	send := func(bufs ...[]byte) {
		wmu.Lock()
		defer wmu.Unlock()
		if werr != nil {
			return
		}
		nb := net.Buffers(bufs)
		if _, err := nb.WriteTo(sc.nc); err != nil {
			werr = err
			sc.nc.Close()
		}
	}
	size := sc.s.Backend.Size()
	// Payload memory per connection is bounded: a client cannot make the
	// server hold Workers × MaxPayload bytes.
	mem := newBudget(max(64<<20, int64(sc.maxPayload)))
	var hdr [requestHeaderLen]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil // the client went away without NBD_CMD_DISC
			}
			return err
		}
		if be.Uint32(hdr[:]) != magicRequest {
			return fmt.Errorf("nbd: bad request magic %#x", be.Uint32(hdr[:]))
		}
		req := serverReq{
			flags:  be.Uint16(hdr[4:]),
			cmd:    be.Uint16(hdr[6:]),
			cookie: be.Uint64(hdr[8:]),
			off:    be.Uint64(hdr[16:]),
			length: be.Uint32(hdr[24:]),
		}
		if req.cmd == cmdDisc {
			return nil // the deferred Wait lets requests in flight finish
		}
		errno := sc.check(&req, size)
		if req.cmd == cmdWrite {
			// The payload follows whatever we think of the request: read it
			// (or skip it) to stay in sync.
			if errno != 0 || req.length > sc.maxPayload {
				if _, err := io.CopyN(io.Discard, br, int64(req.length)); err != nil {
					return err
				}
				if errno == 0 {
					errno = errnoEINVAL
				}
			} else {
				mem.acquire(int64(req.length))
				req.mem = int64(req.length)
				req.data = getBuf(int(req.length))
				if _, err := io.ReadFull(br, req.data); err != nil {
					putBuf(req.data)
					return err
				}
			}
		}
		if errno != 0 {
			sc.replyError(send, &req, errno, "bad request")
			continue
		}
		if req.cmd == cmdRead {
			mem.acquire(int64(req.length))
			req.mem = int64(req.length)
		}
		// Register writes in the order they were read, before their
		// handler runs: see writeOrder.
		var ow *orderedWrite
		var before []*orderedWrite
		switch req.cmd {
		case cmdWrite, cmdTrim, cmdWriteZeroes:
			ow, before = sc.s.order.start(int64(req.off), int64(req.length))
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { mem.release(req.mem); <-sem; wg.Done() }()
			if ow != nil {
				sc.s.order.wait(before)
				defer sc.s.order.finish(ow)
			}
			sc.handle(send, &req)
		}()
		if werr := func() error { wmu.Lock(); defer wmu.Unlock(); return werr }(); werr != nil {
			return werr
		}
	}
}

type serverReq struct {
	flags, cmd uint16
	cookie     uint64
	off        uint64
	length     uint32
	data       []byte
	mem        int64 // bytes of the connection's budget it holds
}

// budget is a counting semaphore of bytes.
type budget struct {
	mu    sync.Mutex
	cond  sync.Cond
	avail int64
}

func newBudget(n int64) *budget {
	b := &budget{avail: n}
	b.cond.L = &b.mu
	return b
}

// acquire waits for n bytes; n must not exceed the budget's size.
func (b *budget) acquire(n int64) {
	b.mu.Lock()
	for b.avail < n {
		b.cond.Wait()
	}
	b.avail -= n
	b.mu.Unlock()
}

func (b *budget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.avail += n
	b.mu.Unlock()
	b.cond.Broadcast()
}

// check validates a request before it runs, returning an NBD errno.
func (sc *serverConn) check(r *serverReq, size int64) uint32 {
	known := uint16(cmdFlagFUA | cmdFlagNoHole | cmdFlagDF | cmdFlagReqOne)
	if r.flags&^known != 0 {
		return errnoEINVAL
	}
	switch r.cmd {
	case cmdRead, cmdWrite, cmdTrim, cmdWriteZeroes, cmdBlockStatus:
		if r.off > uint64(size) || uint64(r.length) > uint64(size)-r.off {
			if r.cmd == cmdWrite || r.cmd == cmdWriteZeroes {
				return errnoENOSPC
			}
			return errnoEINVAL
		}
	case cmdFlush:
		if r.off != 0 || r.length != 0 {
			return errnoEINVAL
		}
		return 0
	default:
		// Unknown commands (and CACHE, which we do not advertise) carry no
		// payload without extended headers: nothing to skip.
		return errnoEINVAL
	}
	if sc.s.ReadOnly && (r.cmd == cmdWrite || r.cmd == cmdTrim || r.cmd == cmdWriteZeroes) {
		return errnoEPERM
	}
	switch r.cmd {
	case cmdRead:
		if r.length > sc.maxPayload {
			return errnoEINVAL
		}
		if r.length == 0 {
			return errnoEINVAL
		}
	case cmdBlockStatus:
		if !sc.allocCtx || r.length == 0 {
			return errnoEINVAL
		}
	case cmdWrite, cmdTrim, cmdWriteZeroes:
		if r.length == 0 && r.cmd != cmdWrite {
			return errnoEINVAL
		}
	}
	return 0
}

var bufPool sync.Pool

func getBuf(n int) []byte {
	if b, ok := bufPool.Get().(*[]byte); ok && cap(*b) >= n {
		return (*b)[:n]
	}
	return make([]byte, n, max(n, 256<<10))
}

func putBuf(b []byte) {
	if cap(b) <= 4<<20 {
		bufPool.Put(&b)
	}
}

func toErrno(err error) uint32 {
	var en syscall.Errno
	if errors.As(err, &en) {
		switch en {
		case syscall.EPERM, syscall.EACCES, syscall.EROFS:
			return errnoEPERM
		case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
			return errnoENOSPC
		case syscall.ENOMEM:
			return errnoENOMEM
		case syscall.EOPNOTSUPP:
			return errnoENOTSUP
		case syscall.EINVAL:
			return errnoEINVAL
		}
	}
	return errnoEIO
}

func (sc *serverConn) handle(send func(...[]byte), r *serverReq) {
	b := sc.s.Backend
	off, n := int64(r.off), int64(r.length)
	var err error
	switch r.cmd {
	case cmdRead:
		buf := getBuf(int(n))
		defer putBuf(buf)
		if _, err = b.ReadAt(buf, off); err == nil {
			sc.replyData(send, r, buf)
			return
		}
	case cmdWrite:
		_, err = b.WriteAt(r.data, off)
		putBuf(r.data)
	case cmdFlush:
		err = b.Sync()
	case cmdTrim:
		err = b.Punch(off, n)
	case cmdWriteZeroes:
		if r.flags&cmdFlagNoHole != 0 {
			err = b.Zero(off, n)
		} else {
			err = b.Punch(off, n)
		}
	case cmdBlockStatus:
		var ext []BlockExtent
		if ext, err = b.Allocation(off, n); err == nil {
			sc.replyStatus(send, r, ext)
			return
		}
	}
	if err == nil && r.flags&cmdFlagFUA != 0 && r.cmd != cmdRead && r.cmd != cmdBlockStatus {
		err = b.Sync()
	}
	if err != nil {
		sc.replyError(send, r, toErrno(err), err.Error())
		return
	}
	sc.replyOK(send, r)
}

func simpleHeader(cookie uint64, errno uint32) []byte {
	b := be.AppendUint32(make([]byte, 0, simpleReplyLen), magicSimple)
	b = be.AppendUint32(b, errno)
	return be.AppendUint64(b, cookie)
}

func chunkHeader(flags, typ uint16, cookie uint64, length int) []byte {
	b := be.AppendUint32(make([]byte, 0, structuredHeaderLen), magicStructure)
	b = be.AppendUint16(b, flags)
	b = be.AppendUint16(b, typ)
	b = be.AppendUint64(b, cookie)
	return be.AppendUint32(b, uint32(length))
}

func (sc *serverConn) replyOK(send func(...[]byte), r *serverReq) {
	if sc.structured {
		send(chunkHeader(replyFlagDone, chunkNone, r.cookie, 0))
		return
	}
	send(simpleHeader(r.cookie, 0))
}

func (sc *serverConn) replyData(send func(...[]byte), r *serverReq, data []byte) {
	if !sc.structured {
		send(simpleHeader(r.cookie, 0), data)
		return
	}
	send(chunkHeader(replyFlagDone, chunkOffsetData, r.cookie, 8+len(data)), be.AppendUint64(nil, r.off), data)
}

func (sc *serverConn) replyError(send func(...[]byte), r *serverReq, errno uint32, msg string) {
	if !sc.structured {
		send(simpleHeader(r.cookie, errno))
		return
	}
	if len(msg) > 256 {
		msg = msg[:256]
	}
	p := be.AppendUint32(nil, errno)
	p = be.AppendUint16(p, uint16(len(msg)))
	p = append(p, msg...)
	send(chunkHeader(replyFlagDone, chunkError, r.cookie, len(p)), p)
}

func (sc *serverConn) replyStatus(send func(...[]byte), r *serverReq, ext []BlockExtent) {
	p := be.AppendUint32(nil, allocCtxID)
	end := int64(r.off) + int64(r.length)
	for i, e := range ext {
		if e.Offset >= end || e.Length <= 0 {
			break
		}
		n := min(e.Length, end-e.Offset) // < 4 GiB: the request length is 32-bit
		p = be.AppendUint32(p, uint32(n))
		p = be.AppendUint32(p, e.Flags)
		if r.flags&cmdFlagReqOne != 0 || i >= 4000 {
			break
		}
	}
	if len(p) == 4 { // the backend returned nothing: call it data
		p = be.AppendUint32(p, r.length)
		p = be.AppendUint32(p, 0)
	}
	send(chunkHeader(replyFlagDone, chunkBlockStatus, r.cookie, len(p)), p)
}
