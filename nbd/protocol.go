package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// Wire constants of the NBD protocol, doc/proto.md of
// https://github.com/NetworkBlockDevice/nbd. Those go-nbd's protocol package
// defines are taken from it; the rest (structured replies, meta contexts,
// the newer commands) it lacks.
const (
	magicNBD       = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	magicOpt       = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	magicOptReply  = protocol.NEGOTIATION_MAGIC_REPLY
	magicRequest   = protocol.TRANSMISSION_MAGIC_REQUEST
	magicSimple    = protocol.TRANSMISSION_MAGIC_REPLY
	magicStructure = uint32(0x668e33ef)

	// Handshake flags (server) and client flags.
	flagFixedNewstyle = protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE
	flagNoZeroes      = uint16(1 << 1)
	clientFixed       = uint32(1 << 0)
	clientNoZeroes    = uint32(1 << 1)

	optExportName     = uint32(1)
	optAbort          = protocol.NEGOTIATION_ID_OPTION_ABORT
	optList           = protocol.NEGOTIATION_ID_OPTION_LIST
	optStartTLS       = uint32(5)
	optInfo           = protocol.NEGOTIATION_ID_OPTION_INFO
	optGo             = protocol.NEGOTIATION_ID_OPTION_GO
	optStructured     = uint32(8)
	optListMetaCtx    = uint32(9)
	optSetMetaContext = uint32(10)

	repAck         = protocol.NEGOTIATION_TYPE_REPLY_ACK
	repServer      = protocol.NEGOTIATION_TYPE_REPLY_SERVER
	repInfo        = protocol.NEGOTIATION_TYPE_REPLY_INFO
	repMetaContext = uint32(4)
	repErrBit      = uint32(1 << 31)
	repErrUnsup    = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	repErrPolicy   = repErrBit | 2
	repErrInvalid  = repErrBit | 3
	repErrPlatform = repErrBit | 4
	repErrTLSReqd  = repErrBit | 5
	repErrUnknown  = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN
	repErrShutdown = repErrBit | 7
	repErrBSReqd   = repErrBit | 8
	repErrTooBig   = repErrBit | 9

	infoExport    = protocol.NEGOTIATION_TYPE_INFO_EXPORT
	infoName      = protocol.NEGOTIATION_TYPE_INFO_NAME
	infoDesc      = protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION
	infoBlockSize = protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE

	cmdRead        = protocol.TRANSMISSION_TYPE_REQUEST_READ
	cmdWrite       = protocol.TRANSMISSION_TYPE_REQUEST_WRITE
	cmdDisc        = protocol.TRANSMISSION_TYPE_REQUEST_DISC
	cmdFlush       = uint16(3)
	cmdTrim        = uint16(4)
	cmdCache       = uint16(5)
	cmdWriteZeroes = uint16(6)
	cmdBlockStatus = uint16(7)

	cmdFlagFUA     = uint16(1 << 0)
	cmdFlagNoHole  = uint16(1 << 1)
	cmdFlagDF      = uint16(1 << 2)
	cmdFlagReqOne  = uint16(1 << 3)
	cmdFlagFastZ   = uint16(1 << 4)
	cmdFlagPayload = uint16(1 << 5)

	replyFlagDone = uint16(1 << 0)

	chunkNone        = uint16(0)
	chunkOffsetData  = uint16(1)
	chunkOffsetHole  = uint16(2)
	chunkBlockStatus = uint16(5)
	chunkErrBit      = uint16(1 << 15)
	chunkError       = chunkErrBit | 1
	chunkErrorOffset = chunkErrBit | 2

	requestHeaderLen    = 28
	simpleReplyLen      = 16
	structuredHeaderLen = 20
)

// Transmission flags of an export (NBD_FLAG_*), as [Client.Flags] returns
// them.
const (
	FlagHasFlags        = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	FlagReadOnly        = uint16(1 << 1)
	FlagSendFlush       = uint16(1 << 2)
	FlagSendFUA         = uint16(1 << 3)
	FlagRotational      = uint16(1 << 4)
	FlagSendTrim        = uint16(1 << 5)
	FlagSendWriteZeroes = uint16(1 << 6)
	FlagSendDF          = uint16(1 << 7)
	FlagCanMultiConn    = protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN
	FlagSendCache       = uint16(1 << 10)
	FlagSendFastZero    = uint16(1 << 11)
)

// Block status flags of the base:allocation context.
const (
	StateHole = uint32(1 << 0) // NBD_STATE_HOLE: unallocated
	StateZero = uint32(1 << 1) // NBD_STATE_ZERO: reads as zeroes
)

// Protocol limits. NBD lengths are 32-bit without extended headers, which no
// installed server offers; requests are split below 4 GiB.
const (
	// maxLength is the longest request length we send: 4 GiB minus 64 KiB,
	// aligned for any block size a server may require.
	maxLength = 1<<32 - 1<<16
	// defaultMaxPayload is the payload limit when the server states none
	// (proto.md: 32 MiB is what clients may assume).
	defaultMaxPayload = 32 << 20
	// maxOptReply bounds an option reply's payload we are willing to read.
	maxOptReply = 64 << 10
	// maxChunkMeta bounds structured reply chunks that carry no read data
	// (errors, block status): enough for 8191 block status descriptors.
	maxChunkMeta = 64 << 10
)

// NBD error numbers (proto.md "Error values").
const (
	errnoEPERM     = 1
	errnoEIO       = 5
	errnoENOMEM    = 12
	errnoEINVAL    = 22
	errnoENOSPC    = 28
	errnoEOVERFLOW = 75
	errnoENOTSUP   = 95
	errnoESHUTDOWN = 108
)

var be = binary.BigEndian

// Errors callers branch on.
var (
	// ErrProtocol is wrapped by every error about a reply or handshake that
	// violates the protocol: the connection is dropped.
	ErrProtocol = errors.New("nbd: protocol violation")
	// ErrUnsupported is returned for a command the export does not offer
	// (its transmission flag is clear).
	ErrUnsupported = errors.New("nbd: not supported by the export")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("nbd: client closed")
	// ErrDisconnected wraps connection failures: the request may or may not
	// have reached the server.
	ErrDisconnected = errors.New("nbd: connection lost")
)

// An Error is an error the server returned for one request. It is not a
// connection failure: the connection stays usable.
type Error struct {
	Op      string // "read", "write", "flush", ...
	Offset  int64
	Length  int64
	Errno   uint32 // the NBD error value
	Message string // from a structured error chunk, if any
}

func (e *Error) Error() string {
	msg := ""
	if e.Message != "" {
		msg = ": " + e.Message
	}
	return fmt.Sprintf("nbd: %s at %d+%d: server error %s%s", e.Op, e.Offset, e.Length, errnoName(e.Errno), msg)
}

// Unwrap maps the NBD error value to the syscall errno, so that
// errors.Is(err, syscall.EIO) works.
func (e *Error) Unwrap() error { return syscall.Errno(e.Errno) }

func errnoName(n uint32) string {
	switch n {
	case errnoEPERM:
		return "EPERM"
	case errnoEIO:
		return "EIO"
	case errnoENOMEM:
		return "ENOMEM"
	case errnoEINVAL:
		return "EINVAL"
	case errnoENOSPC:
		return "ENOSPC"
	case errnoEOVERFLOW:
		return "EOVERFLOW"
	case errnoENOTSUP:
		return "ENOTSUP"
	case errnoESHUTDOWN:
		return "ESHUTDOWN"
	}
	return fmt.Sprintf("errno %d", n)
}

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
}

func cmdName(c uint16) string {
	switch c {
	case cmdRead:
		return "read"
	case cmdWrite:
		return "write"
	case cmdDisc:
		return "disconnect"
	case cmdFlush:
		return "flush"
	case cmdTrim:
		return "trim"
	case cmdCache:
		return "cache"
	case cmdWriteZeroes:
		return "write-zeroes"
	case cmdBlockStatus:
		return "block-status"
	}
	return fmt.Sprintf("command %d", c)
}

// putRequest encodes a request header into b[:28].
func putRequest(b []byte, flags, cmd uint16, cookie, off uint64, length uint32) {
	be.PutUint32(b[0:], magicRequest)
	be.PutUint16(b[4:], flags)
	be.PutUint16(b[6:], cmd)
	be.PutUint64(b[8:], cookie)
	be.PutUint64(b[16:], off)
	be.PutUint32(b[24:], length)
}
