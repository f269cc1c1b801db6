package mtcp

import (
	"bytes"
	"syscall"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
)

// TestChildKilled kills children with SIGKILL at both points where one
// holds a chunk: while compressing it (just after it announced itself
// idle and was given work) and after it said done, before the flush. The
// output must still decompress to exactly the input.
func TestChildKilled(t *testing.T) {
	testenv.Require(t, testenv.Commands("xz"))
	data := testData(t, "binary", 6*MinChunkSize+123)
	var killed []uint32
	idles := 0
	testHook = func(pid uint32, m Message) {
		switch {
		case m.Kind == MsgDone && m.Chunk == 2 && len(killed) == 0:
			// Holding chunk 2 compressed, not yet flushed.
			killed = append(killed, pid)
			syscall.Kill(int(pid), syscall.SIGKILL)
		case m.Kind == MsgIdle && len(killed) == 1:
			// Dies while the control process hands it the next chunk.
			if idles++; idles == 2 {
				killed = append(killed, pid)
				syscall.Kill(int(pid), syscall.SIGKILL)
			}
		}
	}
	defer func() { testHook = nil }()
	got := compress(t, data, Options{Level: 0, ChunkSize: MinChunkSize, Children: 2})
	if len(killed) != 2 {
		t.Fatalf("killed %d children, want 2", len(killed))
	}
	if back := stockXZ(t, got); !bytes.Equal(back, data) {
		t.Fatalf("after killing children %v, xz -d output differs from the input", killed)
	}
}

// TestChildWorksAhead: a child that finished a chunk announces itself
// idle at once, before its Block is flushed, and takes the next chunk
// while it holds the Block; killed at that point, it loses both, and the
// output is still exactly the input.
func TestChildWorksAhead(t *testing.T) {
	testenv.Require(t, testenv.Commands("xz"))
	data := testData(t, "text", 4*MinChunkSize+5)
	last := map[uint32]byte{}
	aheadSeen, killedAhead := 0, false
	testHook = func(pid uint32, m Message) {
		if m.Kind == MsgIdle && last[pid] == MsgDone {
			aheadSeen++
			if !killedAhead {
				killedAhead = true
				syscall.Kill(int(pid), syscall.SIGKILL)
			}
		}
		last[pid] = m.Kind
	}
	defer func() { testHook = nil }()
	got := compress(t, data, Options{Level: 0, ChunkSize: MinChunkSize, Children: 1})
	if aheadSeen < 2 {
		t.Fatalf("a child announced itself idle right after done %d times, want one per chunk", aheadSeen)
	}
	if back := stockXZ(t, got); !bytes.Equal(back, data) {
		t.Fatalf("after killing a child that worked ahead, xz -d output differs from the input")
	}
}
