package nbd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// fakeConn is a net.Conn whose peer's bytes are fixed: what the client
// writes is discarded. Reads block until gate (if set) is closed, so that a test can
// register its requests before any reply is read (a real server cannot
// answer a request before it was sent).
type fakeConn struct {
	r    io.Reader
	gate chan struct{}
}

func (f *fakeConn) Read(p []byte) (int, error) {
	if f.gate != nil {
		<-f.gate
	}
	return f.r.Read(p)
}
func (f *fakeConn) Write(p []byte) (int, error)      { return len(p), nil }
func (f *fakeConn) Close() error                     { return nil }
func (f *fakeConn) LocalAddr() net.Addr              { return &net.UnixAddr{} }
func (f *fakeConn) RemoteAddr() net.Addr             { return &net.UnixAddr{} }
func (f *fakeConn) SetDeadline(time.Time) error      { return nil }
func (f *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (f *fakeConn) SetWriteDeadline(time.Time) error { return nil }

func simpleReply(cookie uint64, errno uint32, data []byte) []byte {
	b := be.AppendUint32(nil, magicSimple)
	b = be.AppendUint32(b, errno)
	b = be.AppendUint64(b, cookie)
	return append(b, data...)
}

func chunk(flags, typ uint16, cookie uint64, payload []byte) []byte {
	b := be.AppendUint32(nil, magicStructure)
	b = be.AppendUint16(b, flags)
	b = be.AppendUint16(b, typ)
	b = be.AppendUint64(b, cookie)
	b = be.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

// fuzzRequests runs the requests FuzzReplies answers: cookie 1 reads 4096
// bytes at 4096, cookie 2 asks block status for 0+65536, cookie 3 writes,
// cookie 4 flushes.
func fuzzRequests(t testing.TB, structured bool, stream []byte) []error {
	info := &exportInfo{structured: structured, contexts: map[string]uint32{"base:allocation": 7}}
	o := Options{MaxInFlight: 8, Timeout: -1}
	o.setDefaults()
	gate := make(chan struct{})
	c := newConn(&fakeConn{r: bytes.NewReader(stream), gate: gate}, info, &o)
	reqs := []*request{
		{cmd: cmdRead, off: 4096, length: 4096, dst: make([]byte, 4096)},
		{cmd: cmdBlockStatus, off: 0, length: 65536, ctxID: 7},
		{cmd: cmdWrite, off: 0, length: 512},
		{cmd: cmdFlush},
	}
	ctx := context.Background()
	errs := make([]error, len(reqs))
	started := make([]bool, len(reqs))
	for i, r := range reqs {
		var payload []byte
		if r.cmd == cmdWrite {
			payload = make([]byte, 512)
		}
		// Nothing is read before the gate opens, so every start should
		// succeed; keep the error anyway rather than assume it.
		errs[i] = c.start(ctx, r, 0, payload)
		started[i] = errs[i] == nil
	}
	// Only now may the "server" answer: before, the reader could see a
	// reply to a cookie not yet issued and fail the connection.
	close(gate)
	var wg sync.WaitGroup
	for i, r := range reqs {
		if !started[i] {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = c.wait(ctx, r) }()
	}
	wg.Wait()
	c.close()
	return errs
}

func replySeeds() [][]byte {
	data := bytes.Repeat([]byte{0xab}, 4096)
	simple := bytes.Join([][]byte{
		simpleReply(3, 0, nil),
		simpleReply(1, 0, data),
		simpleReply(4, 5, nil),
	}, nil)
	var st []byte
	st = append(st, chunk(0, chunkOffsetData, 1, append(be.AppendUint64(nil, 4096), data[:1024]...))...)
	st = append(st, chunk(0, chunkBlockStatus, 2, []byte{0, 0, 0, 7, 0, 0, 0x80, 0, 0, 0, 0, 3, 0, 0, 0x80, 0, 0, 0, 0, 0})...)
	st = append(st, chunk(replyFlagDone, chunkNone, 2, nil)...)
	st = append(st, chunk(replyFlagDone, chunkOffsetHole, 1, []byte{0, 0, 0, 0, 0, 0, 0x14, 0, 0, 0, 0x0c, 0})...)
	st = append(st, simpleReply(3, 0, nil)...)
	st = append(st, chunk(replyFlagDone, chunkError, 4, []byte{0, 0, 0, 5, 0, 2, 'h', 'i'})...)
	return [][]byte{simple, st}
}

func TestRepliesOutOfOrder(t *testing.T) {
	seeds := replySeeds()
	errs := fuzzRequests(t, false, seeds[0])
	if errs[0] != nil || errs[2] != nil {
		t.Fatalf("simple replies: %v", errs)
	}
	var ne *Error
	if !errors.As(errs[3], &ne) || ne.Errno != errnoEIO {
		t.Fatalf("flush: want EIO, got %v", errs[3])
	}
	errs = fuzzRequests(t, true, seeds[1])
	if errs[0] != nil || errs[1] != nil || errs[2] != nil {
		t.Fatalf("structured replies: %v", errs)
	}
	if !errors.As(errs[3], &ne) || ne.Message != "hi" {
		t.Fatalf("flush: want error chunk, got %v", errs[3])
	}
}

func TestHostileReplies(t *testing.T) {
	for name, stream := range map[string][]byte{
		"unknown cookie":   simpleReply(99, 0, nil),
		"truncated read":   simpleReply(1, 0, make([]byte, 100)),
		"bad magic":        []byte("HTTP/1.1 200 OK\r\n\r\n"),
		"oversized chunk":  chunk(replyFlagDone, chunkOffsetData, 1, append(be.AppendUint64(nil, 4096), make([]byte, 8192)...)),
		"huge error chunk": be.AppendUint32(chunk(replyFlagDone, chunkError, 4, nil)[:16], 0xffffffff),
		"outside request":  chunk(replyFlagDone, chunkOffsetHole, 1, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0}),
		"short read":       chunk(replyFlagDone, chunkOffsetData, 1, append(be.AppendUint64(nil, 4096), 1)),
		"unsolicited sr":   chunk(replyFlagDone, chunkNone, 3, nil),
	} {
		t.Run(name, func(t *testing.T) {
			structured := name != "unsolicited sr"
			errs := fuzzRequests(t, structured, stream)
			for _, err := range errs[:2] {
				if err == nil {
					t.Fatalf("no error: %v", errs)
				}
			}
			if !errors.Is(errs[0], ErrProtocol) && !errors.Is(errs[0], ErrDisconnected) {
				t.Errorf("error %v wraps neither ErrProtocol nor ErrDisconnected", errs[0])
			}
		})
	}
}

// FuzzReplies feeds arbitrary server replies to a connection with four
// requests in flight: every request must complete, with no panic and no
// allocation beyond the protocol's bounds.
func FuzzReplies(f *testing.F) {
	for _, s := range replySeeds() {
		f.Add(false, s)
		f.Add(true, s)
	}
	f.Fuzz(func(t *testing.T, structured bool, stream []byte) {
		fuzzRequests(t, structured, stream)
	})
}

// handshakeSeed is a valid newstyle negotiation: greeting, ACK to
// STRUCTURED_REPLY, a meta context, ACK, then NBD_OPT_GO's INFO and ACK.
func handshakeSeed() []byte {
	b := be.AppendUint64(nil, magicNBD)
	b = be.AppendUint64(b, magicOpt)
	b = be.AppendUint16(b, flagFixedNewstyle|flagNoZeroes)
	rep := func(opt, typ uint32, data []byte) {
		b = be.AppendUint64(b, magicOptReply)
		b = be.AppendUint32(b, opt)
		b = be.AppendUint32(b, typ)
		b = be.AppendUint32(b, uint32(len(data)))
		b = append(b, data...)
	}
	rep(optStructured, repAck, nil)
	rep(optSetMetaContext, repMetaContext, append([]byte{0, 0, 0, 1}, "base:allocation"...))
	rep(optSetMetaContext, repAck, nil)
	info := be.AppendUint16(nil, infoExport)
	info = be.AppendUint64(info, 1<<30)
	info = be.AppendUint16(info, FlagHasFlags|FlagSendFlush)
	rep(optGo, repInfo, info)
	bs := be.AppendUint16(nil, infoBlockSize)
	bs = be.AppendUint32(bs, 512)
	bs = be.AppendUint32(bs, 4096)
	bs = be.AppendUint32(bs, 1<<20)
	rep(optGo, repInfo, bs)
	rep(optGo, repAck, nil)
	return b
}

func runHandshake(t testing.TB, server []byte) (*exportInfo, error) {
	cl, sv := net.Pipe()
	defer cl.Close()
	go func() {
		go io.Copy(io.Discard, sv)
		sv.Write(server)
		sv.Close()
	}()
	o := Options{MetaContexts: []string{"base:allocation"}}
	o.setDefaults()
	_, info, err := handshake(cl, Target{Export: "x"}, &o)
	return info, err
}

func TestHandshake(t *testing.T) {
	info, err := runHandshake(t, handshakeSeed())
	if err != nil {
		t.Fatal(err)
	}
	if info.size != 1<<30 || !info.structured || info.minBlock != 512 || info.maxPayload != 1<<20 || info.contexts["base:allocation"] != 1 {
		t.Fatalf("bad info %+v", info)
	}
	// A meta context name beyond the protocol's 4096-byte strings.
	long := be.AppendUint64(nil, magicNBD)
	long = be.AppendUint64(long, magicOpt)
	long = be.AppendUint16(long, flagFixedNewstyle|flagNoZeroes)
	for _, r := range []struct {
		opt, typ uint32
		data     []byte
	}{{optStructured, repAck, nil}, {optSetMetaContext, repMetaContext, append([]byte{0, 0, 0, 1}, bytes.Repeat([]byte{'a'}, 60000)...)}} {
		long = be.AppendUint64(long, magicOptReply)
		long = be.AppendUint32(long, r.opt)
		long = be.AppendUint32(long, r.typ)
		long = be.AppendUint32(long, uint32(len(r.data)))
		long = append(long, r.data...)
	}
	if _, err := runHandshake(t, long); !errors.Is(err, ErrProtocol) {
		t.Fatalf("meta context name of 60000 bytes: %v", err)
	}
	seed := handshakeSeed()
	for i := 0; i < len(seed); i += 7 {
		if _, err := runHandshake(t, seed[:i]); err == nil {
			t.Fatalf("truncated handshake of %d bytes accepted", i)
		}
	}
}

// FuzzHandshake plays a fake server's negotiation bytes on a net.Pipe.
func FuzzHandshake(f *testing.F) {
	f.Add(handshakeSeed())
	f.Fuzz(func(t *testing.T, server []byte) {
		info, err := runHandshake(t, server)
		if err == nil && (info.size < 0 || info.maxPayload == 0 || info.minBlock == 0) {
			t.Fatalf("accepted bad info %+v", info)
		}
	})
}
