package mtcp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Message kinds, the letters of the protocol.
const (
	MsgIdle  byte = 'I' // {PID}I, child is ready for a chunk
	MsgData  byte = 'C' // {PID}C{CHUNKID}S{SIZE}{DATA}
	MsgDone  byte = 'D' // {PID}D{CHUNKID}, child has compressed the chunk
	MsgFlush byte = 'F' // {PID}F{CHUNKID}, control asks for the compressed chunk
	MsgQuit  byte = 'Q' // {PID}Q, child exits
)

// sizeMark separates CHUNKID from SIZE in a data message.
const sizeMark byte = 'S'

// Message is one decoded protocol message. Data is set only for MsgData.
type Message struct {
	Kind  byte
	PID   uint32
	Chunk uint64
	Data  []byte
}

// ProtocolError reports a malformed or unexpected message.
type ProtocolError struct {
	PID    uint32 // the peer's process ID as the receiver knows it, 0 if unknown
	Reason string
}

func (e *ProtocolError) Error() string {
	if e.PID != 0 {
		return fmt.Sprintf("mtcp: protocol error with child %d: %s", e.PID, e.Reason)
	}
	return "mtcp: protocol error: " + e.Reason
}

// ErrProtocol is matched by every *ProtocolError with errors.Is.
var ErrProtocol = errors.New("mtcp: protocol error")

// Is makes errors.Is(err, ErrProtocol) true for protocol errors.
func (e *ProtocolError) Is(target error) bool { return target == ErrProtocol }

// AppendMessage appends the wire encoding of m to dst. Data is ignored
// unless m.Kind is MsgData.
func AppendMessage(dst []byte, m Message) []byte {
	dst = binary.BigEndian.AppendUint32(dst, m.PID)
	dst = append(dst, m.Kind)
	switch m.Kind {
	case MsgData:
		dst = binary.BigEndian.AppendUint64(dst, m.Chunk)
		dst = append(dst, sizeMark)
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(m.Data)))
		dst = append(dst, m.Data...)
	case MsgDone, MsgFlush:
		dst = binary.BigEndian.AppendUint64(dst, m.Chunk)
	}
	return dst
}

// writeMessage writes m to w without copying DATA into a second buffer.
func writeMessage(w io.Writer, m Message) error {
	var hdr [4 + 1 + 8 + 1 + 4]byte
	data := m.Data
	m.Data = nil
	h := AppendMessage(hdr[:0], m)
	if m.Kind == MsgData {
		if uint64(len(data)) > 0xffffffff {
			return errors.New("mtcp: data message larger than 4 GiB")
		}
		binary.BigEndian.PutUint32(h[len(h)-4:], uint32(len(data)))
	}
	if _, err := w.Write(h); err != nil {
		return err
	}
	if len(data) > 0 {
		if _, err := w.Write(data); err != nil {
			return err
		}
	}
	return nil
}

// ReadMessage reads one message from r. It accepts only the kinds in
// allowed and data messages of at most maxSize bytes, so a malformed
// stream costs at most maxSize bytes of memory. A stream that ends
// cleanly before a message returns io.EOF; one that ends inside a message
// returns io.ErrUnexpectedEOF; anything else malformed a *ProtocolError.
func ReadMessage(r io.Reader, allowed string, maxSize uint32) (Message, error) {
	return readMessage(r, allowed, maxSize, nil)
}

// readMessage is ReadMessage with the data of a data message read into a
// buffer from bufs, taken once its size is known.
func readMessage(r io.Reader, allowed string, maxSize uint32, bufs buffers) (Message, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Message{}, err
	}
	m := Message{PID: binary.BigEndian.Uint32(hdr[:4]), Kind: hdr[4]}
	if !kindAllowed(m.Kind, allowed) {
		return Message{}, &ProtocolError{PID: m.PID, Reason: fmt.Sprintf("unexpected message kind %q (want one of %q)", m.Kind, allowed)}
	}
	switch m.Kind {
	case MsgIdle, MsgQuit:
		return m, nil
	case MsgDone, MsgFlush:
		var id [8]byte
		if _, err := io.ReadFull(r, id[:]); err != nil {
			return Message{}, unexpectedEOF(err)
		}
		m.Chunk = binary.BigEndian.Uint64(id[:])
		return m, nil
	}
	var rest [8 + 1 + 4]byte
	if _, err := io.ReadFull(r, rest[:]); err != nil {
		return Message{}, unexpectedEOF(err)
	}
	m.Chunk = binary.BigEndian.Uint64(rest[:8])
	if rest[8] != sizeMark {
		return Message{}, &ProtocolError{PID: m.PID, Reason: fmt.Sprintf("data message has %q where S belongs", rest[8])}
	}
	size := binary.BigEndian.Uint32(rest[9:])
	if size > maxSize {
		return Message{}, &ProtocolError{PID: m.PID, Reason: fmt.Sprintf("data message of %d bytes exceeds the limit of %d", size, maxSize)}
	}
	m.Data = bufs.get(int(size))
	if _, err := io.ReadFull(r, m.Data); err != nil {
		return Message{}, unexpectedEOF(err)
	}
	return m, nil
}

func kindAllowed(k byte, allowed string) bool {
	switch k {
	case MsgIdle, MsgData, MsgDone, MsgFlush, MsgQuit:
	default:
		return false
	}
	for i := 0; i < len(allowed); i++ {
		if allowed[i] == k {
			return true
		}
	}
	return false
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
