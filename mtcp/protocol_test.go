package mtcp

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestMessageEncoding(t *testing.T) {
	for _, tc := range []struct {
		m    Message
		wire string
	}{
		{Message{Kind: MsgIdle, PID: 0x01020304}, "\x01\x02\x03\x04I"},
		{Message{Kind: MsgQuit, PID: 7}, "\x00\x00\x00\x07Q"},
		{Message{Kind: MsgDone, PID: 7, Chunk: 0x0102}, "\x00\x00\x00\x07D\x00\x00\x00\x00\x00\x00\x01\x02"},
		{Message{Kind: MsgFlush, PID: 7, Chunk: 3}, "\x00\x00\x00\x07F\x00\x00\x00\x00\x00\x00\x00\x03"},
		{Message{Kind: MsgData, PID: 7, Chunk: 3, Data: []byte("abc")}, "\x00\x00\x00\x07C\x00\x00\x00\x00\x00\x00\x00\x03S\x00\x00\x00\x03abc"},
	} {
		if got := string(AppendMessage(nil, tc.m)); got != tc.wire {
			t.Errorf("AppendMessage(%+v) = %q, want %q", tc.m, got, tc.wire)
		}
		var buf bytes.Buffer
		if err := writeMessage(&buf, tc.m); err != nil || buf.String() != tc.wire {
			t.Errorf("writeMessage(%+v) = %q, %v", tc.m, buf.String(), err)
		}
		m, err := ReadMessage(bytes.NewReader([]byte(tc.wire)), "IDCFQ", 16)
		if err != nil || m.Kind != tc.m.Kind || m.PID != tc.m.PID || m.Chunk != tc.m.Chunk || !bytes.Equal(m.Data, tc.m.Data) {
			t.Errorf("ReadMessage(%q) = %+v, %v", tc.wire, m, err)
		}
	}
}

func TestReadMessageRejects(t *testing.T) {
	for _, tc := range []struct {
		name, wire, allowed string
		want                error
	}{
		{"empty", "", "I", io.EOF},
		{"short pid", "\x00\x00", "I", io.ErrUnexpectedEOF},
		{"unknown kind", "\x00\x00\x00\x01X", "IDCFQ", ErrProtocol},
		{"kind not allowed", "\x00\x00\x00\x01F\x00\x00\x00\x00\x00\x00\x00\x01", "IDC", ErrProtocol},
		{"short chunk id", "\x00\x00\x00\x01D\x00\x00", "D", io.ErrUnexpectedEOF},
		{"no S", "\x00\x00\x00\x01C\x00\x00\x00\x00\x00\x00\x00\x01X\x00\x00\x00\x01a", "C", ErrProtocol},
		{"too large", "\x00\x00\x00\x01C\x00\x00\x00\x00\x00\x00\x00\x01S\xff\xff\xff\xff", "C", ErrProtocol},
		{"short data", "\x00\x00\x00\x01C\x00\x00\x00\x00\x00\x00\x00\x01S\x00\x00\x00\x05ab", "C", io.ErrUnexpectedEOF},
	} {
		_, err := ReadMessage(bytes.NewReader([]byte(tc.wire)), tc.allowed, 16)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.want)
		}
	}
}

// FuzzMessages feeds arbitrary bytes to the message reader: every
// message it accepts re-encodes to exactly the bytes it consumed, and
// anything else is an error, never a panic or an allocation beyond the
// size limit.
func FuzzMessages(f *testing.F) {
	f.Add(AppendMessage(AppendMessage(nil, Message{Kind: MsgIdle, PID: 9}), Message{Kind: MsgData, PID: 9, Chunk: 1, Data: []byte("xyz")}))
	f.Add(AppendMessage(nil, Message{Kind: MsgDone, PID: 1 << 31, Chunk: 1 << 63}))
	f.Add([]byte("\x00\x00\x00\x01C\x00\x00\x00\x00\x00\x00\x00\x01S\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, in []byte) {
		const limit = 64
		r := bytes.NewReader(in)
		for {
			before := r.Len()
			m, err := ReadMessage(r, "IDCFQ", limit)
			if err != nil {
				if err != io.EOF && err != io.ErrUnexpectedEOF && !errors.Is(err, ErrProtocol) {
					t.Fatalf("unexpected error type %T: %v", err, err)
				}
				return
			}
			if len(m.Data) > limit {
				t.Fatalf("data of %d bytes accepted over the limit %d", len(m.Data), limit)
			}
			consumed := in[len(in)-before : len(in)-r.Len()]
			if enc := AppendMessage(nil, m); !bytes.Equal(enc, consumed) {
				t.Fatalf("message %+v re-encodes to %q, read from %q", m, enc, consumed)
			}
		}
	})
}
