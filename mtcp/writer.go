package mtcp

import (
	"context"
	"errors"
	"io"
	"sync"
)

// Writer compresses what is written to it into one .xz Stream on the
// underlying writer, through a pool of child processes. It is not safe
// for concurrent use. Close must be called to write the last Block, the
// Index and the Stream Footer; it does not close the underlying writer.
type Writer struct {
	ctx      context.Context
	cancel   context.CancelFunc
	o        Options
	children int
	buf      []byte
	nextID   uint64
	chunks   chan *chunk
	slots    chan struct{}
	free     buffers
	done     chan struct{}
	err      error // the pool's result, set before done closes
	closed   bool
	once     sync.Once
}

var _ io.WriteCloser = (*Writer)(nil)

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("mtcp: writer closed")

// NewWriter returns a Writer compressing into w with the options o. The
// children start when the first chunk is ready; ctx bounds the whole
// life of the writer (cancelling it kills the children and makes Write
// and Close fail). The program must call [Main] first thing in main.
func NewWriter(ctx context.Context, w io.Writer, o Options) (*Writer, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	res := SystemResources()
	auto := ChildCount(res.Memory, res.CPUs, o.Level, o.ChunkSize)
	n := auto
	if o.Children > 0 {
		n = o.Children
		if n > auto {
			o.Logf("mtcp: %d children requested; %d fit in %d MiB of memory and %d CPUs at level %d (%d MiB each), the system may run out of memory or CPU",
				n, auto, res.Memory>>20, res.CPUs, o.Level, perChildMemory(o.Level, o.ChunkSize)>>20)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	wr := &Writer{
		ctx:      ctx,
		cancel:   cancel,
		o:        o,
		children: n,
		chunks:   make(chan *chunk),
		slots:    make(chan struct{}, 2*n+2),
		free:     make(buffers, 2),
		done:     make(chan struct{}),
	}
	p := &pool{
		o:        o,
		target:   n,
		out:      w,
		in:       wr.chunks,
		slots:    wr.slots,
		free:     wr.free,
		children: map[uint32]*child{},
		events:   make(chan event, 16),
		blocks:   make(buffers, 2),
	}
	go func() {
		wr.err = p.run(ctx)
		close(wr.done)
	}()
	return wr, nil
}

// Children is the number of child processes the writer runs at most.
func (w *Writer) Children() int { return w.children }

// ChunkSize is the uncompressed size of each Block but the last.
func (w *Writer) ChunkSize() int { return w.o.ChunkSize }

// Write buffers p into chunks and hands each full chunk to the pool. It
// blocks while 2 chunks per child and 2 more are in flight (a child may
// compress one chunk while it holds the Block of another, and the 2 more
// are ready for the next idle child), so the control process holds at most
// (2 × children + 3) chunks, plus one Block being written.
func (w *Writer) Write(p []byte) (int, error) {
	if w.closed {
		return 0, ErrClosed
	}
	n := 0
	for len(p) > 0 {
		if w.buf == nil {
			w.buf = w.free.get(w.o.ChunkSize)[:0]
		}
		k := min(len(p), w.o.ChunkSize-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p, n = p[k:], n+k
		if len(w.buf) == w.o.ChunkSize {
			if err := w.submit(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

func (w *Writer) submit() error {
	c := &chunk{id: w.nextID, data: w.buf}
	select {
	case w.slots <- struct{}{}:
	case <-w.done:
		return w.failure()
	}
	select {
	case w.chunks <- c:
	case <-w.done:
		return w.failure()
	}
	w.nextID++
	w.buf = nil
	return nil
}

func (w *Writer) failure() error {
	if w.err != nil {
		return w.err
	}
	return errors.New("mtcp: pool stopped")
}

// Close compresses what is buffered, waits for every Block and writes
// the Index and Stream Footer. The underlying writer is not closed.
func (w *Writer) Close() error {
	if w.closed {
		<-w.done
		return w.err
	}
	w.closed = true
	var err error
	if len(w.buf) > 0 {
		err = w.submit()
	}
	close(w.chunks)
	<-w.done
	w.cancel()
	if err != nil {
		return err
	}
	return w.err
}
