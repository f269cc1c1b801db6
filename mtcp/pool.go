package mtcp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"sync"

	"github.com/blockimage/blockimage/internal/deathsig"
	"github.com/blockimage/blockimage/internal/reexec"
)

// maxHeld is how many compressed Blocks a child may hold, waiting for
// their flush, and still be given a new chunk: with 1, a child that
// finished its chunk before the one due next goes on with another chunk
// instead of waiting for its flush, and holds at most 2 Blocks.
const maxHeld = 1

type chunk struct {
	id    uint64
	data  []byte
	tries int
}

// A child is the control process's view of one child process. Which
// message it may send next follows from these fields: idle when it has
// not announced itself since it was last given a chunk, compresses
// nothing and holds at most maxHeld Blocks (counting the one being
// flushed); done for busy; data for flushing; nothing once quitting.
type child struct {
	pid      uint32
	cmd      *exec.Cmd
	send     chan Message
	stderr   *tailBuffer
	started  bool     // its first idle arrived
	ready    bool     // announced idle and not given a chunk since
	busy     *chunk   // being compressed: a done is due
	held     []*chunk // compressed, waiting for their flush
	flushing *chunk   // flush sent: its data is due
	quitting bool     // quit sent, or killed
}

// holding counts the Blocks the child keeps for us.
func (c *child) holding() int {
	n := len(c.held)
	if c.flushing != nil {
		n++
	}
	return n
}

// state describes the child for error messages.
func (c *child) state() string {
	switch {
	case c.quitting:
		return "quitting"
	case !c.started:
		return "starting"
	}
	s := fmt.Sprintf("holding %d Blocks", c.holding())
	if c.busy != nil {
		s = fmt.Sprintf("compressing chunk %d, %s", c.busy.id, s)
	}
	if c.ready {
		s = "idle, " + s
	}
	return s
}

// event is a message from a child, or err when its output ended.
type event struct {
	c   *child
	m   Message
	err error
}

// maxTries bounds how often one chunk is handed out again after the
// child holding it died; a chunk that kills every child is an error.
const maxTries = 4

// pool is the control process's scheduler; run owns all its state.
type pool struct {
	o      Options
	target int // children wanted
	out    io.Writer
	in     <-chan *chunk
	slots  <-chan struct{} // receive one per written chunk, to let Write go on
	free   buffers         // written chunks' buffers, for Write to reuse

	children map[uint32]*child
	events   chan event
	blocks   buffers  // written Blocks' buffers, for the readers to reuse
	pending  []*chunk // not assigned, by id
	next     uint64   // next chunk to write
	records  []indexRecord
	inBytes  int64
	outBytes int64
	deaths   int
	ready    bool // some child has sent its first idle
	inputEnd bool
	total    uint64 // chunks submitted
	wg       sync.WaitGroup
}

// run drives the pool until the input has ended and every Block, the
// Index and the Stream Footer are written, or until an error.
func (p *pool) run(ctx context.Context) (err error) {
	defer func() {
		p.stopAll(err != nil)
	}()
	if err := p.write(streamHeader(checkCRC64)); err != nil {
		return err
	}
	in := p.in
	for {
		if p.inputEnd && p.next == p.total {
			return p.finish()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case c, ok := <-in:
			if !ok {
				p.inputEnd, in = true, nil
			} else {
				p.total++
				p.pending = append(p.pending, c)
			}
		case ev := <-p.events:
			if err := p.handle(ev); err != nil {
				return err
			}
		}
		if err := p.dispatch(ctx); err != nil {
			return err
		}
	}
}

// dispatch gives pending chunks to idle children, starts children while
// there is work and fewer than target live, and quits idle children that
// hold nothing once the input has ended and nothing is left to give.
func (p *pool) dispatch(ctx context.Context) error {
	for len(p.pending) > 0 {
		c := p.idleChild()
		if c == nil {
			break
		}
		ch := p.pending[0]
		p.pending = p.pending[1:]
		c.ready, c.busy = false, ch
		c.send <- Message{Kind: MsgData, PID: c.pid, Chunk: ch.id, Data: ch.data}
	}
	for len(p.pending) > p.starting() && p.live() < p.target {
		if err := p.spawn(ctx); err != nil {
			return err
		}
	}
	if p.inputEnd && len(p.pending) == 0 {
		for _, c := range p.children {
			if c.ready && c.holding() == 0 && !c.quitting {
				c.quitting = true
				c.send <- Message{Kind: MsgQuit, PID: c.pid}
				close(c.send)
			}
		}
	}
	return nil
}

// idleChild picks the idle child to give the next chunk to: one that
// holds no Block if there is one, since a child holding a Block may be
// flushed soon and then wants a chunk of its own.
func (p *pool) idleChild() *child {
	var best *child
	for _, c := range p.children {
		if !c.ready || c.quitting {
			continue
		}
		if best == nil || c.holding() < best.holding() || c.holding() == best.holding() && c.pid < best.pid {
			best = c
		}
	}
	return best
}

func (p *pool) starting() int {
	n := 0
	for _, c := range p.children {
		if !c.started && !c.quitting {
			n++
		}
	}
	return n
}

// live counts children that are or will be able to take work.
func (p *pool) live() int {
	n := 0
	for _, c := range p.children {
		if !c.quitting {
			n++
		}
	}
	return n
}

// spawnName is the reexec name of the children; tests substitute
// misbehaving ones.
var spawnName = childName

// testHook, when set by a test, sees every message the control process
// receives, before it is handled.
var testHook func(pid uint32, m Message)

func (p *pool) handle(ev event) error {
	c := ev.c
	if testHook != nil && ev.err == nil {
		testHook(c.pid, ev.m)
	}
	if ev.err != nil {
		return p.lost(c, ev.err)
	}
	m := ev.m
	bad := func(format string, args ...any) error {
		return &ProtocolError{PID: c.pid, Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case c.quitting:
		return bad("message %q after quit", m.Kind)
	case m.Kind == MsgIdle && !c.ready && c.busy == nil && c.holding() <= maxHeld:
		c.started, c.ready, p.ready = true, true, true
	case m.Kind == MsgDone && c.busy != nil:
		if m.Chunk != c.busy.id {
			return bad("done with chunk %d, was given %d", m.Chunk, c.busy.id)
		}
		c.held = append(c.held, c.busy)
		c.busy = nil
		return p.flushNext()
	case m.Kind == MsgData && c.flushing != nil:
		ch := c.flushing
		if m.Chunk != ch.id {
			return bad("sent chunk %d, was asked for %d", m.Chunk, ch.id)
		}
		rec, err := checkBlock(m.Data, len(ch.data))
		if err != nil {
			return bad("chunk %d: %v", m.Chunk, err)
		}
		if err := p.write(m.Data); err != nil {
			return err
		}
		p.blocks.put(m.Data)
		p.records = append(p.records, rec)
		p.inBytes += int64(len(ch.data))
		p.next++
		if ch.tries == 0 { // else a dead child's writer may still read it
			p.free.put(ch.data)
		}
		c.flushing = nil
		<-p.slots
		if p.o.Progress != nil {
			p.o.Progress(p.inBytes, p.outBytes)
		}
		return p.flushNext()
	default:
		return bad("message %q while %s", m.Kind, c.state())
	}
	return nil
}

// flushNext asks the child holding the next chunk for it, if one does
// and no flush is under way.
func (p *pool) flushNext() error {
	for _, c := range p.children {
		if c.flushing != nil {
			return nil
		}
	}
	for _, c := range p.children {
		for i, ch := range c.held {
			if ch.id == p.next {
				c.held = slices.Delete(c.held, i, i+1)
				c.flushing = ch
				c.send <- Message{Kind: MsgFlush, PID: c.pid, Chunk: ch.id}
				return nil
			}
		}
	}
	return nil
}

// lost handles the end of a child's output: expected after quit, else a
// death whose chunk goes back to the queue.
func (p *pool) lost(c *child, readErr error) error {
	delete(p.children, c.pid)
	quitting := c.quitting
	waitErr := p.reap(c)
	var perr *ProtocolError
	switch {
	case quitting && readErr == io.EOF:
		return nil
	case errors.As(readErr, &perr):
		return readErr
	}
	p.deaths++
	p.o.Logf("mtcp: child %d died (%v; %v) %s", c.pid, readErr, waitErr, c.stderr.String())
	lost := c.held // c is gone from p.children: its fields are ours
	for _, ch := range []*chunk{c.busy, c.flushing} {
		if ch != nil {
			lost = append(lost, ch)
		}
	}
	for _, ch := range lost {
		ch.tries++
		if ch.tries >= maxTries {
			return fmt.Errorf("mtcp: chunk %d lost %d children, giving up: last %v %s", ch.id, ch.tries, waitErr, c.stderr.String())
		}
		i, _ := slices.BinarySearchFunc(p.pending, ch.id, func(a *chunk, id uint64) int { return cmpU64(a.id, id) })
		p.pending = slices.Insert(p.pending, i, ch)
	}
	if p.deaths > 4*p.target+4 {
		if !p.ready {
			// A child that dies before its first message is usually the
			// program itself, re-executed by a main that lacks mtcp.Main.
			return fmt.Errorf("mtcp: %d children exited before they were ready (does main call mtcp.Main first?): last %v %s", p.deaths, waitErr, c.stderr.String())
		}
		return fmt.Errorf("mtcp: %d children died, giving up: last %v %s", p.deaths, waitErr, c.stderr.String())
	}
	return nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// spawn starts a child; it announces itself with an idle message.
func (p *pool) spawn(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	cmd, err := reexec.Command(spawnName, childArgs(p.o.Codec, p.o.Level, p.o.ChunkSize)...)
	if err != nil {
		return err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	tail := &tailBuffer{}
	cmd.Stderr = tail
	// deathsig: no compressor outlives an interrupted backup.
	if err := deathsig.Start(cmd); err != nil {
		return fmt.Errorf("mtcp: starting child: %w", err)
	}
	c := &child{pid: uint32(cmd.Process.Pid), cmd: cmd, send: make(chan Message, 4), stderr: tail}
	p.children[c.pid] = c
	maxBlock := uint32(BlockBound(p.o.ChunkSize))
	p.wg.Add(2)
	go func() { // the child's output, one event per message
		defer p.wg.Done()
		r := bufio.NewReaderSize(stdout, 64<<10)
		for {
			m, err := readMessage(r, "IDC", maxBlock, p.blocks)
			if err == nil && m.PID != c.pid {
				err = &ProtocolError{PID: c.pid, Reason: fmt.Sprintf("message claims to come from process %d", m.PID)}
			}
			if err != nil {
				p.events <- event{c: c, err: err}
				return
			}
			p.events <- event{c: c, m: m}
		}
	}()
	go func() { // the child's input; after a write error, drain
		defer p.wg.Done()
		w := bufio.NewWriterSize(stdin, 64<<10)
		var werr error
		for m := range c.send {
			if werr == nil {
				werr = writeMessage(w, m)
			}
			if werr == nil {
				werr = w.Flush()
			}
		}
		stdin.Close()
	}()
	return nil
}

// reap waits for a child whose output has ended.
func (p *pool) reap(c *child) error {
	if !c.quitting {
		c.cmd.Process.Kill()
		close(c.send)
		c.quitting = true
	}
	return c.cmd.Wait()
}

// stopAll ends every remaining child: politely after success (they are
// all idle and got quit already), with SIGKILL after an error. Event
// senders are drained so their goroutines end.
func (p *pool) stopAll(kill bool) {
	for _, c := range p.children {
		if kill {
			c.cmd.Process.Kill()
		}
		if !c.quitting {
			c.quitting = true
			close(c.send)
		}
	}
	for len(p.children) > 0 {
		ev := <-p.events
		if ev.err != nil {
			delete(p.children, ev.c.pid)
			ev.c.cmd.Wait()
		}
	}
	p.wg.Wait()
}

// finish writes the Index and Stream Footer.
func (p *pool) finish() error {
	idx := appendIndex(nil, p.records)
	return p.write(append(idx, streamFooter(checkCRC64, len(idx))...))
}

func (p *pool) write(b []byte) error {
	n, err := p.out.Write(b)
	p.outBytes += int64(n)
	if err != nil {
		return fmt.Errorf("mtcp: writing output: %w", err)
	}
	return nil
}

// checkBlock verifies that a child's Block is what the Index will claim:
// a valid header with both sizes, the chunk's length, and nothing more
// than header, data, padding and CRC64.
func checkBlock(b []byte, chunkLen int) (indexRecord, error) {
	h, err := parseBlockHeader(b)
	if err != nil {
		return indexRecord{}, err
	}
	if h.uncompressedSize != int64(chunkLen) || h.compressedSize < 0 {
		return indexRecord{}, fmt.Errorf("block header sizes %d/%d, chunk has %d bytes", h.compressedSize, h.uncompressedSize, chunkLen)
	}
	unpadded := int64(h.size) + h.compressedSize + 8
	if padded := (int64(h.size)+h.compressedSize+3)&^3 + 8; padded != int64(len(b)) {
		return indexRecord{}, fmt.Errorf("block of %d bytes, header says %d", len(b), padded)
	}
	return indexRecord{unpadded: unpadded, uncompressed: int64(chunkLen)}, nil
}

// tailBuffer keeps the last KiB a child wrote to its standard error.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if len(t.buf) > 1024 {
		t.buf = t.buf[len(t.buf)-1024:]
	}
	return len(b), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.buf) == 0 {
		return ""
	}
	return fmt.Sprintf("(stderr: %q)", t.buf)
}
