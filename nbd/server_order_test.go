package nbd

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
)

// stallBackend is a memBackend whose first write stalls until released,
// and which reports each write it starts.
type stallBackend struct {
	memBackend
	once    sync.Once
	stalled chan struct{} // closed when the first write is stalled
	release chan struct{}
	writes  chan []byte // every later write's data, when it starts
}

func (b *stallBackend) WriteAt(p []byte, off int64) (int, error) {
	first := false
	b.once.Do(func() { first = true })
	if first {
		close(b.stalled)
		<-b.release
	} else {
		b.writes <- append([]byte(nil), p...)
	}
	return b.memBackend.WriteAt(p, off)
}

// TestServerOrdersStaleWrites: a write still running for a connection the
// client gave up on cannot land after newer data for the same blocks that
// the client wrote on a new connection.
func TestServerOrdersStaleWrites(t *testing.T) {
	b := &stallBackend{memBackend: memBackend{data: make([]byte, 1<<20)},
		stalled: make(chan struct{}), release: make(chan struct{}), writes: make(chan []byte, 4)}
	s := &Server{Backend: b, Name: "x"}
	waiting := make(chan struct{}, 4)
	s.order.waiting = func() { waiting <- struct{}{} }
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(testCtx(t))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.Serve(ctx, l) }()
	defer func() { cancel(); close(b.writes); wg.Wait() }()
	uri := "nbd://" + l.Addr().String() + "/x"

	old, newer := bytes.Repeat([]byte{1}, 4096), bytes.Repeat([]byte{2}, 4096)
	c1, err := Dial(ctx, uri, Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := &request{cmd: cmdWrite, off: 0, length: 4096}
	if err := c1.conns[0].start(ctx, r, 0, old); err != nil {
		t.Fatal(err)
	}
	<-b.stalled // the old write is running in the server
	c1.conns[0].close()

	c2, err := Dial(ctx, uri, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	done := make(chan error, 1)
	go func() { done <- c2.WriteAt(ctx, newer, 0) }()
	// Release the stale write once the newer one either waits for it
	// (correct) or has reached the backend (it would be overwritten).
	select {
	case <-waiting:
	case <-b.writes:
	}
	close(b.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	b.memBackend.ReadAt(got, 0)
	if !bytes.Equal(got, newer) {
		t.Fatalf("the stale write from the closed connection landed after the newer one (block holds %d)", got[0])
	}
}
