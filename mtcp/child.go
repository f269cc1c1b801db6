package mtcp

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
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
	// Messages are read on their own goroutine and chunks compressed on
	// another, so that a flush is answered while the next chunk is being
	// compressed.
	type read struct {
		m   Message
		err error
	}
	msgs := make(chan read)
	stop := make(chan struct{})
	defer close(stop)
	inputs := make(buffers, 2) // chunks, back once compressed
	go func() {
		for {
			m, err := readMessage(r, "CFQ", uint32(chunkSize), inputs)
			select {
			case msgs <- read{m, err}:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	type block struct {
		id   uint64
		data []byte
		err  error
	}
	compressed := make(chan block, 1)
	var (
		held        []block            // compressed, waiting for their flush
		spare       = make(buffers, 2) // flushed Blocks' buffers
		lzma2       []byte             // used by the compressing goroutine only
		compressing bool
		announced   bool // idle sent, no chunk received since
	)
	// announce sends idle when the child can take a chunk: it compresses
	// nothing and holds at most maxHeld Blocks.
	announce := func() error {
		if announced || compressing || len(held) > maxHeld {
			return nil
		}
		announced = true
		return send(Message{Kind: MsgIdle})
	}
	if err := announce(); err != nil {
		return err
	}
	for {
		select {
		case b := <-compressed:
			compressing = false
			if b.err != nil {
				return b.err
			}
			held = append(held, b)
			if err := send(Message{Kind: MsgDone, Chunk: b.id}); err != nil {
				return err
			}
		case rd := <-msgs:
			if rd.err == io.EOF {
				return nil // the control process is gone or done
			}
			if rd.err != nil {
				return rd.err
			}
			m := rd.m
			if m.PID != pid {
				return &ProtocolError{PID: m.PID, Reason: fmt.Sprintf("message for process %d received by %d", m.PID, pid)}
			}
			switch m.Kind {
			case MsgQuit:
				return nil
			case MsgData:
				if !announced {
					return &ProtocolError{PID: pid, Reason: fmt.Sprintf("chunk %d received while not idle", m.Chunk)}
				}
				announced, compressing = false, true
				go func(id uint64, data, buf []byte) {
					var err error
					lzma2, err = enc.EncodeLZMA2(lzma2[:0], data)
					if err != nil {
						compressed <- block{err: fmt.Errorf("compressing chunk %d: %w", id, err)}
						return
					}
					buf = frameBlock(buf, lzma2, data, p.DictSize)
					if len(buf) > BlockBound(len(data)) {
						err = fmt.Errorf("chunk %d: block of %d bytes exceeds the bound", id, len(buf))
					}
					inputs.put(data)
					compressed <- block{id: id, data: buf, err: err}
				}(m.Chunk, m.Data, spare.get(0))
			case MsgFlush:
				i := slices.IndexFunc(held, func(b block) bool { return b.id == m.Chunk })
				if i < 0 {
					return &ProtocolError{PID: pid, Reason: fmt.Sprintf("flush of chunk %d, which this child does not hold", m.Chunk)}
				}
				b := held[i]
				held = slices.Delete(held, i, i+1)
				if err := send(Message{Kind: MsgData, Chunk: b.id, Data: b.data}); err != nil {
					return err
				}
				spare.put(b.data)
			}
		}
		if err := announce(); err != nil {
			return err
		}
	}
}
