package mtcp

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/blockimage/blockimage/internal/reexec"
)

// childName is the reexec name of a compression child.
const childName = "mtcp-compressor"

func init() { reexec.Register(childName, childMain) }

// Main runs a compression child when this process was started as one
// and never returns then; otherwise it returns at once. Call it first
// thing in main (and in TestMain) of every program that uses NewWriter.
func Main() { reexec.Init() }

// childArgs are the arguments a control process passes to a child.
func childArgs(codec string, level, chunkSize int) []string {
	return []string{codec, strconv.Itoa(level), strconv.Itoa(chunkSize)}
}

func childMain() {
	if err := runChild(os.Args[1:], uint32(os.Getpid()), os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "mtcp child %d: %v\n", os.Getpid(), err)
		os.Exit(1)
	}
}

// runChild is a child's life: announce idle, compress what arrives,
// answer flushes, exit on quit or when the control process goes away.
func runChild(args []string, pid uint32, in io.Reader, out io.Writer) error {
	if len(args) != 3 {
		return fmt.Errorf("want arguments CODEC LEVEL CHUNKSIZE, got %q", args)
	}
	codec, ok := lookupCodec(args[0])
	if !ok {
		return fmt.Errorf("%w %q in this binary", ErrUnknownCodec, args[0])
	}
	level, err := strconv.Atoi(args[1])
	if err != nil {
		return fmt.Errorf("level: %w", err)
	}
	p, err := PresetFor(level)
	if err != nil {
		return err
	}
	chunkSize, err := strconv.Atoi(args[2])
	if err != nil || chunkSize < MinChunkSize || chunkSize > MaxChunkSize {
		return fmt.Errorf("bad chunk size %q", args[2])
	}
	enc, err := codec(level)
	if err != nil {
		return err
	}
	r := bufio.NewReaderSize(in, 64<<10)
	w := bufio.NewWriterSize(out, 64<<10)
	send := func(m Message) error {
		m.PID = pid
		if err := writeMessage(w, m); err != nil {
			return err
		}
		return w.Flush()
	}
	if err := send(Message{Kind: MsgIdle}); err != nil {
		return err
	}
	var (
		held    []byte // the compressed Block awaiting a flush
		heldID  uint64
		holding bool
		lzma2   []byte
	)
	for {
		allowed := "CQ"
		if holding {
			allowed = "FQ"
		}
		m, err := ReadMessage(r, allowed, uint32(chunkSize))
		if err == io.EOF {
			return nil // the control process is gone or done
		}
		if err != nil {
			return err
		}
		if m.PID != pid {
			return &ProtocolError{PID: m.PID, Reason: fmt.Sprintf("message for process %d received by %d", m.PID, pid)}
		}
		switch m.Kind {
		case MsgQuit:
			return nil
		case MsgData:
			lzma2, err = enc.EncodeLZMA2(lzma2[:0], m.Data)
			if err != nil {
				return fmt.Errorf("compressing chunk %d: %w", m.Chunk, err)
			}
			held = frameBlock(held[:0], lzma2, m.Data, p.DictSize)
			if len(held) > BlockBound(len(m.Data)) {
				return fmt.Errorf("chunk %d: block of %d bytes exceeds the bound", m.Chunk, len(held))
			}
			heldID, holding = m.Chunk, true
			if err := send(Message{Kind: MsgDone, Chunk: m.Chunk}); err != nil {
				return err
			}
		case MsgFlush:
			if m.Chunk != heldID {
				return &ProtocolError{PID: pid, Reason: fmt.Sprintf("flush of chunk %d, holding %d", m.Chunk, heldID)}
			}
			if err := send(Message{Kind: MsgData, Chunk: heldID, Data: held}); err != nil {
				return err
			}
			holding = false
			if cap(held) > 2*BlockBound(chunkSize) {
				held = nil
			}
			if err := send(Message{Kind: MsgIdle}); err != nil {
				return err
			}
		}
	}
}
