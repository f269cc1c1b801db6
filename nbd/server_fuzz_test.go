package nbd

import (
	"bytes"
	"context"
	"sync"
	"testing"
)

// memBackend is an in-memory Backend for unit tests.
type memBackend struct {
	mu   sync.Mutex
	data []byte
}

func (m *memBackend) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(p, m.data[off:]), nil
}

func (m *memBackend) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.data[off:], p), nil
}

func (m *memBackend) Size() int64 { return int64(len(m.data)) }
func (m *memBackend) Sync() error { return nil }
func (m *memBackend) Punch(off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+n])
	return nil
}
func (m *memBackend) Zero(off, n int64) error { return m.Punch(off, n) }
func (m *memBackend) Allocation(off, n int64) ([]BlockExtent, error) {
	return []BlockExtent{{Offset: off, Length: n}}, nil
}

// clientStream is a client's side of a session: negotiation with
// structured replies and base:allocation, then requests.
func clientStream(reqs ...[]byte) []byte {
	b := be.AppendUint32(nil, clientFixed|clientNoZeroes)
	opt := func(o uint32, data []byte) {
		b = be.AppendUint64(b, magicOpt)
		b = be.AppendUint32(b, o)
		b = be.AppendUint32(b, uint32(len(data)))
		b = append(b, data...)
	}
	opt(optStructured, nil)
	meta := append(be.AppendUint32(nil, 1), 'x')
	meta = be.AppendUint32(meta, 1)
	meta = append(be.AppendUint32(meta, 15), "base:allocation"...)
	opt(optSetMetaContext, meta)
	opt(optGo, append(append(be.AppendUint32(nil, 1), 'x'), 0, 0))
	for _, r := range reqs {
		b = append(b, r...)
	}
	return b
}

func rawRequest(cmd, flags uint16, off uint64, length uint32, payload []byte) []byte {
	b := make([]byte, requestHeaderLen)
	putRequest(b, flags, cmd, 7, off, length)
	return append(b, payload...)
}

func serveStream(stream []byte) (*memBackend, error) {
	m := &memBackend{data: make([]byte, 64<<10)}
	s := &Server{Backend: m, Name: "x", MaxPayload: 16 << 10, Workers: 2}
	err := s.ServeConn(context.Background(), &fakeConn{r: bytes.NewReader(stream)})
	return m, err
}

func TestServerStream(t *testing.T) {
	m, err := serveStream(clientStream(
		rawRequest(99, 0, 0, 1000, nil), // unknown: no payload follows
		rawRequest(cmdWrite, 0, 512, 4, []byte("abcd")),
		rawRequest(cmdBlockStatus, cmdFlagReqOne, 0, 4096, nil),
		rawRequest(cmdDisc, 0, 0, 0, nil),
	))
	if err != nil {
		t.Fatal(err)
	}
	if string(m.data[512:516]) != "abcd" {
		t.Fatal("write after an unknown command was lost: the stream desynchronised")
	}
}

// FuzzServer feeds arbitrary client bytes to a server over a small memory
// backend: no panic, no hang, no allocation beyond its limits.
func FuzzServer(f *testing.F) {
	f.Add(clientStream(rawRequest(cmdWrite, cmdFlagFUA, 0, 4, []byte("data")), rawRequest(cmdRead, 0, 0, 4096, nil),
		rawRequest(cmdWriteZeroes, cmdFlagNoHole, 0, 8192, nil), rawRequest(cmdDisc, 0, 0, 0, nil)))
	f.Add(clientStream(rawRequest(cmdBlockStatus, 0, 0, 65536, nil), rawRequest(cmdTrim, 0, 4096, 4096, nil)))
	f.Fuzz(func(t *testing.T, stream []byte) {
		serveStream(stream)
	})
}
