package mtcp

import "testing"

func TestBuffers(t *testing.T) {
	var none buffers
	if p := none.get(10); len(p) != 10 {
		t.Fatalf("nil pool: got %d bytes, want 10", len(p))
	}
	none.put(make([]byte, 1)) // must not block

	b := make(buffers, 1)
	big := make([]byte, 100)
	b.put(big)
	b.put(make([]byte, 1)) // pool full: dropped, must not block
	if p := b.get(50); len(p) != 50 || &p[0] != &big[0] {
		t.Fatalf("get(50) after put(100 bytes) did not reuse the buffer")
	}
	b.put(make([]byte, 10))
	if p := b.get(50); len(p) != 50 || cap(p) != 50 {
		t.Fatalf("get(50) with only a 10-byte buffer free: len %d cap %d, want a new 50-byte buffer", len(p), cap(p))
	}
}
