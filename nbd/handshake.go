package nbd

import (
	"crypto/tls"
	"fmt"
	"io"
	"math"
	"net"
)

// exportInfo is what the handshake learned about an export.
type exportInfo struct {
	size       int64
	flags      uint16
	minBlock   uint32 // 1 when the server stated no constraint
	prefBlock  uint32
	maxPayload uint32
	structured bool
	contexts   map[string]uint32 // meta context name -> id
}

// handshake runs the fixed newstyle negotiation on nc and returns the
// connection to use for transmission (a TLS connection after STARTTLS).
// The caller sets deadlines on nc.
func handshake(nc net.Conn, t Target, o *Options) (net.Conn, *exportInfo, error) {
	var hdr [18]byte
	if _, err := io.ReadFull(nc, hdr[:]); err != nil {
		return nil, nil, fmt.Errorf("nbd: reading greeting: %w", err)
	}
	if be.Uint64(hdr[0:]) != magicNBD {
		return nil, nil, protoErr("greeting magic %#x is not NBDMAGIC", be.Uint64(hdr[0:]))
	}
	if m := be.Uint64(hdr[8:]); m != magicOpt {
		if m == 0x00420281861253 {
			return nil, nil, fmt.Errorf("nbd: server speaks the oldstyle protocol, which is not supported")
		}
		return nil, nil, protoErr("greeting magic %#x is not IHAVEOPT", m)
	}
	sflags := be.Uint16(hdr[16:])
	if sflags&flagFixedNewstyle == 0 {
		return nil, nil, fmt.Errorf("nbd: server does not speak the fixed newstyle protocol")
	}
	cflags := clientFixed
	noZeroes := sflags&flagNoZeroes != 0
	if noZeroes {
		cflags |= clientNoZeroes
	}
	var cf [4]byte
	be.PutUint32(cf[:], cflags)
	if _, err := nc.Write(cf[:]); err != nil {
		return nil, nil, fmt.Errorf("nbd: sending client flags: %w", err)
	}
	h := &haggler{rw: nc}
	if t.TLS || o.TLSConfig != nil {
		if err := h.startTLS(); err != nil {
			return nil, nil, err
		}
		cfg := &tls.Config{}
		if o.TLSConfig != nil {
			cfg = o.TLSConfig.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = t.ServerName
		}
		tc := tls.Client(nc, cfg)
		if err := tc.Handshake(); err != nil {
			return nil, nil, fmt.Errorf("nbd: TLS handshake: %w", err)
		}
		nc = tc
		h.rw = tc
	}
	info := &exportInfo{minBlock: 1, prefBlock: 4096, maxPayload: defaultMaxPayload}
	if !o.NoStructuredReplies {
		ok, err := h.simple(optStructured, nil)
		if err != nil {
			return nil, nil, err
		}
		info.structured = ok
	}
	if info.structured && len(o.MetaContexts) > 0 {
		ctxs, err := h.setMetaContext(t.Export, o.MetaContexts)
		if err != nil {
			return nil, nil, err
		}
		info.contexts = ctxs
	}
	if o.infoOnly {
		unsup, err := h.infoOrGo(optInfo, t.Export, info)
		if err == nil && unsup {
			err = fmt.Errorf("nbd: server does not support NBD_OPT_INFO: %w", ErrUnsupported)
		}
		if err == nil {
			h.send(optAbort, nil) // the server may answer or just close
		}
		return nc, info, err
	}
	fallback, err := h.goExport(t.Export, info)
	if err != nil {
		return nil, nil, err
	}
	if fallback {
		if err := h.exportName(t.Export, noZeroes, info); err != nil {
			return nil, nil, err
		}
	}
	if info.flags&FlagHasFlags == 0 {
		info.flags = FlagHasFlags // no flags at all: read and write only
	}
	return nc, info, nil
}

// haggler sends options and reads their replies.
type haggler struct {
	rw  io.ReadWriter
	buf []byte
}

func (h *haggler) send(opt uint32, data []byte) error {
	b := make([]byte, 16+len(data))
	be.PutUint64(b[0:], magicOpt)
	be.PutUint32(b[8:], opt)
	be.PutUint32(b[12:], uint32(len(data)))
	copy(b[16:], data)
	if _, err := h.rw.Write(b); err != nil {
		return fmt.Errorf("nbd: sending option %d: %w", opt, err)
	}
	return nil
}

// reply reads one option reply to opt; the payload is valid until the next
// call.
func (h *haggler) reply(opt uint32) (typ uint32, data []byte, err error) {
	var hdr [20]byte
	if _, err := io.ReadFull(h.rw, hdr[:]); err != nil {
		return 0, nil, fmt.Errorf("nbd: reading reply to option %d: %w", opt, err)
	}
	if m := be.Uint64(hdr[0:]); m != magicOptReply {
		return 0, nil, protoErr("option reply magic %#x", m)
	}
	if o := be.Uint32(hdr[8:]); o != opt {
		return 0, nil, protoErr("reply to option %d while option %d was sent", o, opt)
	}
	typ = be.Uint32(hdr[12:])
	n := be.Uint32(hdr[16:])
	if n > maxOptReply {
		return 0, nil, protoErr("option reply of %d bytes is too long", n)
	}
	if cap(h.buf) < int(n) {
		h.buf = make([]byte, n)
	}
	data = h.buf[:n]
	if _, err := io.ReadFull(h.rw, data); err != nil {
		return 0, nil, fmt.Errorf("nbd: reading reply to option %d: %w", opt, err)
	}
	if typ == repAck && n != 0 {
		return 0, nil, protoErr("ACK with %d bytes of payload", n)
	}
	return typ, data, nil
}

// optError turns an error reply into an error; unsupported reports whether
// the server simply does not know the option.
func optError(opt, typ uint32, data []byte) (unsupported bool, err error) {
	msg := ""
	if len(data) > 0 {
		msg = ": " + sanitize(data)
	}
	switch typ {
	case repErrUnsup:
		return true, fmt.Errorf("nbd: option %d not supported%s", opt, msg)
	case repErrTLSReqd:
		return false, fmt.Errorf("nbd: server requires TLS (use nbds:// or Options.TLSConfig)%s", msg)
	case repErrUnknown:
		return false, fmt.Errorf("nbd: export not found%s", msg)
	case repErrPolicy:
		return false, fmt.Errorf("nbd: option %d forbidden by server policy%s", opt, msg)
	case repErrShutdown:
		return false, fmt.Errorf("nbd: server is shutting down%s", msg)
	case repErrBSReqd:
		return false, fmt.Errorf("nbd: server requires block size negotiation%s", msg)
	}
	if typ&repErrBit != 0 {
		return false, fmt.Errorf("nbd: option %d failed with error %#x%s", opt, typ, msg)
	}
	return false, protoErr("unexpected reply type %d to option %d", typ, opt)
}

func sanitize(b []byte) string {
	if len(b) > 200 {
		b = b[:200]
	}
	return fmt.Sprintf("%q", b)
}

// simple sends an option without data that expects an ACK; ok is false if the
// server does not support it.
func (h *haggler) simple(opt uint32, data []byte) (bool, error) {
	if err := h.send(opt, data); err != nil {
		return false, err
	}
	typ, data, err := h.reply(opt)
	if err != nil {
		return false, err
	}
	if typ == repAck {
		return true, nil
	}
	unsup, err := optError(opt, typ, data)
	if unsup || typ == repErrPolicy {
		return false, nil
	}
	return false, err
}

func (h *haggler) startTLS() error {
	ok, err := h.simple(optStartTLS, nil)
	if err != nil {
		return fmt.Errorf("nbd: STARTTLS: %w", err)
	}
	if !ok {
		return fmt.Errorf("nbd: server does not support TLS (NBD_OPT_STARTTLS)")
	}
	return nil
}

func (h *haggler) setMetaContext(export string, queries []string) (map[string]uint32, error) {
	n := 4 + len(export) + 4
	for _, q := range queries {
		n += 4 + len(q)
	}
	b := make([]byte, 0, n)
	b = be.AppendUint32(b, uint32(len(export)))
	b = append(b, export...)
	b = be.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = be.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	if err := h.send(optSetMetaContext, b); err != nil {
		return nil, err
	}
	ctxs := map[string]uint32{}
	for i := 0; ; i++ {
		typ, data, err := h.reply(optSetMetaContext)
		if err != nil {
			return nil, err
		}
		switch typ {
		case repAck:
			return ctxs, nil
		case repMetaContext:
			// The protocol limits strings to 4096 bytes: with at most
			// len(queries)+1024 replies, a hostile server makes us hold
			// a few MiB of names, not 64 KiB each.
			if len(data) < 4 || len(data) > 4+4096 || i > len(queries)+1024 {
				return nil, protoErr("bad meta context reply of %d bytes", len(data))
			}
			ctxs[string(data[4:])] = be.Uint32(data[0:])
		default:
			if unsup, err := optError(optSetMetaContext, typ, data); !unsup {
				return nil, err
			}
			return ctxs, nil // no meta contexts: block status unavailable
		}
	}
}

// goExport sends NBD_OPT_GO; fallback is true when the server does not know
// it and NBD_OPT_EXPORT_NAME must be used.
func (h *haggler) goExport(export string, info *exportInfo) (fallback bool, err error) {
	return h.infoOrGo(optGo, export, info)
}

// infoOrGo sends NBD_OPT_INFO or NBD_OPT_GO and reads the INFO replies.
func (h *haggler) infoOrGo(opt uint32, export string, info *exportInfo) (fallback bool, err error) {
	b := make([]byte, 0, 4+len(export)+4)
	b = be.AppendUint32(b, uint32(len(export)))
	b = append(b, export...)
	b = be.AppendUint16(b, 1)
	b = be.AppendUint16(b, infoBlockSize)
	if err := h.send(opt, b); err != nil {
		return false, err
	}
	gotExport := false
	for i := 0; ; i++ {
		if i > 1024 {
			return false, protoErr("too many replies to NBD_OPT_GO")
		}
		typ, data, err := h.reply(opt)
		if err != nil {
			return false, err
		}
		switch typ {
		case repAck:
			if !gotExport {
				return false, protoErr("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
			}
			return false, nil
		case repInfo:
			if len(data) < 2 {
				return false, protoErr("short NBD_REP_INFO")
			}
			switch be.Uint16(data) {
			case infoExport:
				if len(data) != 12 {
					return false, protoErr("NBD_INFO_EXPORT of %d bytes", len(data))
				}
				if err := info.setExport(be.Uint64(data[2:]), be.Uint16(data[10:])); err != nil {
					return false, err
				}
				gotExport = true
			case infoBlockSize:
				if len(data) != 14 {
					return false, protoErr("NBD_INFO_BLOCK_SIZE of %d bytes", len(data))
				}
				if err := info.setBlockSize(be.Uint32(data[2:]), be.Uint32(data[6:]), be.Uint32(data[10:])); err != nil {
					return false, err
				}
			}
		default:
			unsup, err := optError(opt, typ, data)
			if unsup {
				return true, nil
			}
			return false, err
		}
	}
}

func (h *haggler) exportName(export string, noZeroes bool, info *exportInfo) error {
	if err := h.send(optExportName, []byte(export)); err != nil {
		return err
	}
	n := 10
	if !noZeroes {
		n += 124
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(h.rw, b); err != nil {
		return fmt.Errorf("nbd: NBD_OPT_EXPORT_NAME (export %q unknown?): %w", export, err)
	}
	return info.setExport(be.Uint64(b), be.Uint16(b[8:]))
}

func (i *exportInfo) setExport(size uint64, flags uint16) error {
	if size > math.MaxInt64 {
		return protoErr("export size %d is too large", size)
	}
	i.size, i.flags = int64(size), flags
	return nil
}

func (i *exportInfo) setBlockSize(min, pref, max uint32) error {
	pow2 := func(v uint32) bool { return v != 0 && v&(v-1) == 0 }
	if !pow2(min) || min > 64<<10 || !pow2(pref) || pref < min || max < min || (max != math.MaxUint32 && max%min != 0) {
		return protoErr("bad block size constraints min %d preferred %d max %d", min, pref, max)
	}
	i.minBlock, i.prefBlock = min, pref
	if max > defaultMaxPayload && max != math.MaxUint32 {
		// A larger payload than 32 MiB buys nothing and costs memory.
		max = defaultMaxPayload
	}
	if max == math.MaxUint32 {
		max = defaultMaxPayload
	}
	i.maxPayload = max
	return nil
}
