package nbd

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// silentServer completes the handshake (one export of 1 MiB, no
// structured replies) and then reads requests without ever answering.
func silentServer(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b := be.AppendUint64(nil, magicNBD)
				b = be.AppendUint64(b, magicOpt)
				b = be.AppendUint16(b, flagFixedNewstyle|flagNoZeroes)
				c.Write(b)
				var hdr [16]byte
				io.ReadFull(c, hdr[:4])
				for {
					if _, err := io.ReadFull(c, hdr[:]); err != nil {
						return
					}
					opt, n := be.Uint32(hdr[8:]), be.Uint32(hdr[12:])
					io.CopyN(io.Discard, c, int64(n))
					rep := func(typ uint32, data []byte) {
						r := be.AppendUint64(nil, magicOptReply)
						r = be.AppendUint32(r, opt)
						r = be.AppendUint32(r, typ)
						r = be.AppendUint32(r, uint32(len(data)))
						c.Write(append(r, data...))
					}
					if opt != optGo {
						rep(repErrUnsup, nil)
						continue
					}
					info := be.AppendUint16(nil, infoExport)
					info = be.AppendUint64(info, 1<<20)
					info = be.AppendUint16(info, FlagHasFlags|FlagSendFlush)
					rep(repInfo, info)
					rep(repAck, nil)
					io.Copy(io.Discard, c) // transmission: never answer
					return
				}
			}()
		}
	}()
	return "nbd://" + l.Addr().String() + "/"
}

func TestTimeoutAndCancel(t *testing.T) {
	uri := silentServer(t)
	ctx := testCtx(t)
	// A generous timeout for the handshake on a loaded machine, then a
	// short one for the requests.
	c, err := Dial(ctx, uri, Options{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, cn := range c.conns {
		cn.timeout = 300 * time.Millisecond
	}
	// A cancelled context returns promptly and leaves the connection up.
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	buf := make([]byte, 4096)
	go func() { done <- c.ReadAt(cctx, buf, 0) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled read: %v", err)
	}
	// An operation the server never answers times out and fails the
	// connection.
	if err := c.Flush(ctx); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("unanswered flush: %v", err)
	}
	if err := c.ReadAt(ctx, buf, 0); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("read on a failed connection: %v", err)
	}
	// A sink over such a server gives up after its reconnect timeout.
	s, err := NewSink(ctx, uri, SinkOptions{Options: Options{Timeout: time.Minute},
		ReconnectTimeout: 500 * time.Millisecond, BackoffMin: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.shortenTimeout(200 * time.Millisecond)
	if err := s.WriteAt(ctx, randBytes(1, 4096), 0); err != nil {
		t.Fatal(err) // queued
	}
	if err := s.Flush(ctx); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("flush to a silent server: %v", err)
	}
	if d := s.Durable(); len(d) != 0 {
		t.Fatalf("durable %v although nothing was acknowledged", d)
	}
}

// TestDialCancel: a cancelled context stops the handshake.
func TestDialCancel(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		c, err := l.Accept()
		if err == nil {
			defer c.Close()
			// The client is now in the handshake, waiting for a
			// greeting that never comes: cancel it there.
			cancel()
			io.Copy(io.Discard, c)
		}
	}()
	if _, err := Dial(ctx, "nbd://"+l.Addr().String()+"/x", Options{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Dial with a cancelled context: %v", err)
	}
}

// TestSinkWindowTimeout: a sink whose every request slot is taken by a
// server that never answers fails after the timeout instead of hanging.
func TestSinkWindowTimeout(t *testing.T) {
	uri := silentServer(t)
	ctx := testCtx(t)
	s, err := NewSink(ctx, uri, SinkOptions{Options: Options{Timeout: time.Minute, MaxInFlight: 2},
		ReconnectTimeout: 300 * time.Millisecond, BackoffMin: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.shortenTimeout(200 * time.Millisecond)
	var werr error
	for i := 0; i < 8 && werr == nil; i++ {
		werr = s.WriteAt(ctx, randBytes(uint64(i), 4096), int64(i)*4096)
	}
	if !errors.Is(werr, ErrDisconnected) {
		t.Fatalf("writes to a silent server: %v", werr)
	}
}

// shortenTimeout sets the request timeout of the sink's connections and of
// those it reconnects (whose dials may then time out: the sink keeps
// trying until ReconnectTimeout and reports ErrDisconnected).
func (s *Sink) shortenTimeout(d time.Duration) {
	for _, cn := range s.client.conns {
		cn.timeout = d
	}
	s.opts.Timeout = d
}
