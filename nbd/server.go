package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// A Server serves one export of a [Backend] to NBD clients: fixed newstyle
// negotiation (NBD_OPT_GO, INFO, LIST, STARTTLS, STRUCTURED_REPLY, meta
// context base:allocation), then concurrent READ, WRITE (FUA), FLUSH,
// TRIM, WRITE_ZEROES and BLOCK_STATUS. A bad request gets an error reply
// and the connection stays in sync; only a request with a bad magic (the
// stream cannot be trusted) closes it. Overlapping writes (WRITE, TRIM,
// WRITE_ZEROES) take effect in the order they were read, across all
// connections, so that a write left running for a connection the client
// gave up on cannot land after the data it rewrote on a new connection.
type Server struct {
	// Backend stores the data. Required.
	Backend Backend
	// Name is the export's name; the empty name (the default export) is
	// accepted too.
	Name string
	// Description is sent with NBD_INFO_DESCRIPTION when asked.
	Description string
	// ReadOnly refuses writes with EPERM.
	ReadOnly bool
	// MultiConn advertises CAN_MULTI_CONN: true is correct for backends
	// whose Sync covers writes made through every connection (a file).
	MultiConn bool
	// TLSConfig enables NBD_OPT_STARTTLS; with TLSRequired, clients must
	// use it before anything else.
	TLSConfig   *tls.Config
	TLSRequired bool
	// MaxPayload is the largest READ or WRITE accepted. Default 32 MiB.
	MaxPayload uint32
	// Workers is the number of requests handled at once per connection.
	// Default 16.
	Workers int
	// ErrorLog receives connection errors; default none.
	ErrorLog func(error)

	order writeOrder
}

// Serve accepts connections on l until ctx ends (then it closes l and every
// connection and returns nil) or l fails.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	if s.Backend == nil {
		return errors.New("nbd: Server has no Backend")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("nbd: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.ServeConn(ctx, c); err != nil && s.ErrorLog != nil {
				s.ErrorLog(err)
			}
		}()
	}
}

// ServeConn serves one client connection until it disconnects or ctx ends,
// and closes it.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) error {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	sc := &serverConn{s: s, nc: c, maxPayload: s.MaxPayload, workers: s.Workers}
	if sc.maxPayload == 0 || sc.maxPayload > defaultMaxPayload {
		sc.maxPayload = defaultMaxPayload
	}
	if sc.workers <= 0 {
		sc.workers = 16
	}
	done, err := sc.negotiate()
	if err != nil || done {
		return err
	}
	return sc.transmit()
}

// serverConn is one client's connection.
type serverConn struct {
	s          *Server
	nc         net.Conn
	tls        bool
	structured bool
	allocCtx   bool // base:allocation selected, as context id 1
	maxPayload uint32
	workers    int
	noZeroes   bool
}

const allocCtxID = 1

func (s *Server) flags() uint16 {
	f := FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes | FlagSendDF
	if s.ReadOnly {
		f |= FlagReadOnly
	}
	if s.MultiConn {
		f |= FlagCanMultiConn
	}
	return f
}

func (sc *serverConn) negotiate() (done bool, err error) {
	b := be.AppendUint64(nil, magicNBD)
	b = be.AppendUint64(b, magicOpt)
	b = be.AppendUint16(b, flagFixedNewstyle|flagNoZeroes)
	if _, err := sc.nc.Write(b); err != nil {
		return true, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(sc.nc, cf[:]); err != nil {
		return true, err
	}
	cflags := be.Uint32(cf[:])
	if cflags&^(clientFixed|clientNoZeroes) != 0 {
		return true, fmt.Errorf("nbd: client flags %#x unknown", cflags)
	}
	sc.noZeroes = cflags&clientNoZeroes != 0
	for {
		var hdr [16]byte
		if _, err := io.ReadFull(sc.nc, hdr[:]); err != nil {
			return true, err
		}
		if be.Uint64(hdr[:]) != magicOpt {
			return true, fmt.Errorf("nbd: bad option magic %#x", be.Uint64(hdr[:]))
		}
		opt, n := be.Uint32(hdr[8:]), be.Uint32(hdr[12:])
		if n > maxOptReply {
			return true, fmt.Errorf("nbd: option %d with %d bytes of data", opt, n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(sc.nc, data); err != nil {
			return true, err
		}
		if sc.s.TLSRequired && !sc.tls && opt != optStartTLS && opt != optAbort {
			if opt == optExportName {
				return true, errors.New("nbd: client asked for an export without TLS")
			}
			if err := sc.reply(opt, repErrTLSReqd, []byte("TLS required")); err != nil {
				return true, err
			}
			continue
		}
		switch opt {
		case optExportName:
			if string(data) != sc.s.Name && len(data) != 0 {
				return true, fmt.Errorf("nbd: unknown export %q", data)
			}
			b := be.AppendUint64(nil, uint64(sc.s.Backend.Size()))
			b = be.AppendUint16(b, sc.s.flags())
			if !sc.noZeroes {
				b = append(b, make([]byte, 124)...)
			}
			_, err := sc.nc.Write(b)
			return err != nil, err
		case optAbort:
			sc.reply(opt, repAck, nil)
			return true, nil
		case optList:
			if n != 0 {
				err = sc.reply(opt, repErrInvalid, nil)
				break
			}
			if err = sc.reply(opt, repServer, append(be.AppendUint32(nil, uint32(len(sc.s.Name))), sc.s.Name...)); err == nil {
				err = sc.reply(opt, repAck, nil)
			}
		case optStartTLS:
			switch {
			case sc.s.TLSConfig == nil:
				err = sc.reply(opt, repErrUnsup, nil)
			case sc.tls || n != 0:
				err = sc.reply(opt, repErrInvalid, nil)
			default:
				if err = sc.reply(opt, repAck, nil); err != nil {
					return true, err
				}
				tc := tls.Server(sc.nc, sc.s.TLSConfig)
				if err := tc.Handshake(); err != nil {
					return true, fmt.Errorf("nbd: TLS handshake: %w", err)
				}
				sc.nc, sc.tls = tc, true
			}
		case optStructured:
			if n != 0 {
				err = sc.reply(opt, repErrInvalid, nil)
				break
			}
			sc.structured = true
			err = sc.reply(opt, repAck, nil)
		case optSetMetaContext, optListMetaCtx:
			err = sc.metaContext(opt, data)
		case optInfo, optGo:
			var ok bool
			ok, err = sc.info(opt, data)
			if err == nil && ok && opt == optGo {
				return false, nil
			}
		default:
			err = sc.reply(opt, repErrUnsup, nil)
		}
		if err != nil {
			return true, err
		}
	}
}

func (sc *serverConn) reply(opt, typ uint32, data []byte) error {
	b := be.AppendUint64(make([]byte, 0, 20+len(data)), magicOptReply)
	b = be.AppendUint32(b, opt)
	b = be.AppendUint32(b, typ)
	b = be.AppendUint32(b, uint32(len(data)))
	_, err := sc.nc.Write(append(b, data...))
	return err
}

// parseName reads a u32-length-prefixed string.
func parseName(data []byte) (string, []byte, bool) {
	if len(data) < 4 {
		return "", nil, false
	}
	n := be.Uint32(data)
	if uint64(n) > uint64(len(data)-4) {
		return "", nil, false
	}
	return string(data[4 : 4+n]), data[4+n:], true
}

func (sc *serverConn) info(opt uint32, data []byte) (ok bool, err error) {
	name, rest, good := parseName(data)
	if !good || len(rest) < 2 || len(rest) != 2+2*int(be.Uint16(rest)) {
		return false, sc.reply(opt, repErrInvalid, nil)
	}
	if name != sc.s.Name && name != "" {
		return false, sc.reply(opt, repErrUnknown, []byte("no such export"))
	}
	wantName, wantDesc := false, false
	for q := rest[2:]; len(q) >= 2; q = q[2:] {
		switch be.Uint16(q) {
		case infoName:
			wantName = true
		case infoDesc:
			wantDesc = true
		}
	}
	b := be.AppendUint16(nil, infoExport)
	b = be.AppendUint64(b, uint64(sc.s.Backend.Size()))
	b = be.AppendUint16(b, sc.s.flags())
	if err := sc.reply(opt, repInfo, b); err != nil {
		return false, err
	}
	b = be.AppendUint16(nil, infoBlockSize)
	b = be.AppendUint32(b, 1)
	b = be.AppendUint32(b, 4096)
	b = be.AppendUint32(b, sc.maxPayload)
	if err := sc.reply(opt, repInfo, b); err != nil {
		return false, err
	}
	if wantName {
		if err := sc.reply(opt, repInfo, append(be.AppendUint16(nil, infoName), sc.s.Name...)); err != nil {
			return false, err
		}
	}
	if wantDesc && sc.s.Description != "" {
		if err := sc.reply(opt, repInfo, append(be.AppendUint16(nil, infoDesc), sc.s.Description...)); err != nil {
			return false, err
		}
	}
	return true, sc.reply(opt, repAck, nil)
}

func (sc *serverConn) metaContext(opt uint32, data []byte) error {
	if opt == optSetMetaContext && !sc.structured {
		return sc.reply(opt, repErrInvalid, []byte("structured replies not negotiated"))
	}
	name, rest, ok := parseName(data)
	if !ok || len(rest) < 4 {
		return sc.reply(opt, repErrInvalid, nil)
	}
	if name != sc.s.Name && name != "" {
		return sc.reply(opt, repErrUnknown, nil)
	}
	nq := be.Uint32(rest)
	rest = rest[4:]
	var queries []string
	for i := uint32(0); i < nq; i++ {
		var q string
		if q, rest, ok = parseName(rest); !ok {
			return sc.reply(opt, repErrInvalid, nil)
		}
		queries = append(queries, q)
	}
	if len(rest) != 0 {
		return sc.reply(opt, repErrInvalid, nil)
	}
	match := false
	for _, q := range queries {
		if q == "base:allocation" || (opt == optListMetaCtx && q == "base:") {
			match = true
		}
	}
	if opt == optListMetaCtx && nq == 0 {
		match = true
	}
	if opt == optSetMetaContext {
		sc.allocCtx = match
	}
	if match {
		if err := sc.reply(opt, repMetaContext, append(be.AppendUint32(nil, allocCtxID), "base:allocation"...)); err != nil {
			return err
		}
	}
	return sc.reply(opt, repAck, nil)
}
