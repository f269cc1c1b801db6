package nbd

import "sync"

// writeOrder makes writes that overlap take effect in the order the server
// read them, across all connections of a Server.
//
// NBD does not order requests in flight, and a client never needs two
// overlapping writes in flight at once. But a client that loses a
// connection reconnects and writes the same blocks again while the old
// connection's writes may still be running here (NBD has no fencing): a
// stale write could then land after the newer data. Serialising
// overlapping writes in arrival order closes that window for every write
// the old connection's reader had read before the new one arrived, which
// is all of them in practice (the client only reconnects after it closed
// the old socket, and the reader drains it at once).
type writeOrder struct {
	mu      sync.Mutex
	running []*orderedWrite
	// waiting, for tests, is called when a write waits for an older one.
	waiting func()
}

type orderedWrite struct {
	off, end int64
	done     chan struct{}
}

// start registers a write of [off, off+n) and returns the older
// overlapping writes it must wait for.
func (o *writeOrder) start(off, n int64) (*orderedWrite, []*orderedWrite) {
	w := &orderedWrite{off: off, end: off + n, done: make(chan struct{})}
	o.mu.Lock()
	defer o.mu.Unlock()
	var before []*orderedWrite
	for _, x := range o.running {
		if x.off < w.end && w.off < x.end {
			before = append(before, x)
		}
	}
	o.running = append(o.running, w)
	return w, before
}

// wait waits for the writes start returned.
func (o *writeOrder) wait(before []*orderedWrite) {
	if len(before) > 0 && o.waiting != nil {
		o.waiting()
	}
	for _, x := range before {
		<-x.done
	}
}

// finish unregisters w and releases the writes waiting for it.
func (o *writeOrder) finish(w *orderedWrite) {
	o.mu.Lock()
	for i, x := range o.running {
		if x == w {
			o.running = append(o.running[:i], o.running[i+1:]...)
			break
		}
	}
	o.mu.Unlock()
	close(w.done)
}
