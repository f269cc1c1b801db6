package mtcp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/blockimage/blockimage/internal/reexec"
)

// Misbehaving children: each speaks the protocol wrongly in one way.
var badChildren = map[string]func(pid uint32, in io.Reader, out io.Writer){
	"garbage": func(pid uint32, in io.Reader, out io.Writer) {
		out.Write([]byte("hello, I am not a protocol message"))
	},
	"wrong-pid": func(pid uint32, in io.Reader, out io.Writer) {
		out.Write(AppendMessage(nil, Message{Kind: MsgIdle, PID: pid + 1}))
	},
	"oversize": func(pid uint32, in io.Reader, out io.Writer) {
		out.Write(AppendMessage(nil, Message{Kind: MsgIdle, PID: pid}))
		m, _ := ReadMessage(in, "C", MaxChunkSize)
		out.Write(AppendMessage(nil, Message{Kind: MsgDone, PID: pid, Chunk: m.Chunk}))
		ReadMessage(in, "F", 0)
		hdr := AppendMessage(nil, Message{Kind: MsgData, PID: pid, Chunk: m.Chunk})
		out.Write(append(hdr[:len(hdr)-4], 0xff, 0xff, 0xff, 0xff))
	},
	"wrong-chunk": func(pid uint32, in io.Reader, out io.Writer) {
		out.Write(AppendMessage(nil, Message{Kind: MsgIdle, PID: pid}))
		m, _ := ReadMessage(in, "C", MaxChunkSize)
		out.Write(AppendMessage(nil, Message{Kind: MsgDone, PID: pid, Chunk: m.Chunk + 1}))
	},
	"bad-block": func(pid uint32, in io.Reader, out io.Writer) {
		out.Write(AppendMessage(nil, Message{Kind: MsgIdle, PID: pid}))
		m, _ := ReadMessage(in, "C", MaxChunkSize)
		out.Write(AppendMessage(nil, Message{Kind: MsgDone, PID: pid, Chunk: m.Chunk}))
		ReadMessage(in, "F", 0)
		out.Write(AppendMessage(nil, Message{Kind: MsgData, PID: pid, Chunk: m.Chunk, Data: []byte("not a block")}))
	},
	"idle-twice": func(pid uint32, in io.Reader, out io.Writer) {
		out.Write(AppendMessage(nil, Message{Kind: MsgIdle, PID: pid}))
		out.Write(AppendMessage(nil, Message{Kind: MsgIdle, PID: pid}))
	},
	"idle-while-compressing": func(pid uint32, in io.Reader, out io.Writer) {
		out.Write(AppendMessage(nil, Message{Kind: MsgIdle, PID: pid}))
		ReadMessage(in, "C", MaxChunkSize)
		out.Write(AppendMessage(nil, Message{Kind: MsgIdle, PID: pid}))
	},
	"unasked-data": func(pid uint32, in io.Reader, out io.Writer) {
		out.Write(AppendMessage(nil, Message{Kind: MsgIdle, PID: pid}))
		out.Write(AppendMessage(nil, Message{Kind: MsgData, PID: pid, Chunk: 0, Data: []byte("x")}))
	},
}

func init() {
	for name, fn := range badChildren {
		reexec.Register("mtcp-test-"+name, func() {
			fn(uint32(os.Getpid()), os.Stdin, os.Stdout)
			io.Copy(io.Discard, os.Stdin) // stay until the control process gives up
		})
	}
	reexec.Register("mtcp-test-exit", func() { os.Exit(3) })
}

// TestMisbehavingChild: every protocol violation ends the Writer with a
// ProtocolError, and a child that exits before it is ready with an error
// naming the likely cause; none hangs.
func TestMisbehavingChild(t *testing.T) {
	defer func() { spawnName = childName }()
	data := bytes.Repeat([]byte("abc"), MinChunkSize)
	for name := range badChildren {
		spawnName = "mtcp-test-" + name
		err := writeAll(data)
		t.Logf("%s: %v", name, err)
		if !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: err %v, want a protocol error", name, err)
		}
	}
	spawnName = "mtcp-test-exit"
	if err := writeAll(data); err == nil || !strings.Contains(err.Error(), "mtcp.Main") {
		t.Errorf("child exiting at once: err %v, want one that mentions mtcp.Main", err)
	}
}

func writeAll(data []byte) error {
	w, err := NewWriter(context.Background(), io.Discard, Options{ChunkSize: MinChunkSize, Children: 1, Logf: func(string, ...any) {}})
	if err != nil {
		return err
	}
	_, werr := w.Write(data)
	cerr := w.Close()
	return errors.Join(werr, cerr)
}
