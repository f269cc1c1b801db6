package mtcp

// buffers recycles large byte slices (chunks and Blocks) between the
// goroutine that empties them and the one that fills the next, so that
// each chunk does not cost the kernel faulting in and zeroing fresh
// pages. It never blocks: a full pool drops the buffer, an empty one
// allocates. The nil pool always allocates.
type buffers chan []byte

// get returns a buffer of length n: a recycled one when one large enough
// is free, else a new one.
func (b buffers) get(n int) []byte {
	select {
	case p := <-b:
		if cap(p) >= n {
			return p[:n]
		}
	default:
	}
	return make([]byte, n)
}

// put offers p for reuse; the caller must not touch it afterwards.
func (b buffers) put(p []byte) {
	select {
	case b <- p:
	default:
	}
}
