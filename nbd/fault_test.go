package nbd

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blockimage/blockimage/internal/testenv"
)

// cutProxy forwards TCP connections to a server and cuts each one after a
// random number of client bytes, as a flaky network would.
type cutProxy struct {
	l       net.Listener
	target  string
	rng     *rand.Rand
	maxCut  int64
	cuts    atomic.Int64
	mu      sync.Mutex
	conns   []net.Conn
	stop    atomic.Bool
	dialErr atomic.Value
}

func startCutProxy(t *testing.T, target string, maxCut int64) *cutProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{l: l, target: target, rng: rand.New(rand.NewPCG(42, 43)), maxCut: maxCut}
	t.Cleanup(func() {
		l.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	go p.serve()
	return p
}

func (p *cutProxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			p.dialErr.Store(err.Error())
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		// Cut somewhere in the handshake or the transfer.
		limit := p.maxCut/2 + p.rng.Int64N(p.maxCut)
		p.mu.Unlock()
		if p.stop.Load() {
			limit = 1 << 62
		}
		go func() {
			n, _ := io.Copy(s, io.LimitReader(c, limit))
			if n == limit {
				p.cuts.Add(1)
			}
			c.Close()
			s.Close()
		}()
		go func() {
			io.Copy(c, s)
			c.Close()
			s.Close()
		}()
	}
}

func (p *cutProxy) URI() string { return "nbd://" + p.l.Addr().String() + "/" + testenv.ExportName }

func faultSinkOptions() SinkOptions {
	return SinkOptions{
		MaxUnflushed:     8 << 20,
		BackoffMin:       time.Millisecond,
		BackoffMax:       50 * time.Millisecond,
		ReconnectTimeout: time.Minute,
		Options:          Options{Timeout: 20 * time.Second, RequestSize: 256 << 10},
	}
}

// TestSinkConnectionCuts writes 64 MiB through a proxy that cuts the
// connection at random points, at least 20 times; after each cut the
// extents reported durable must hold the source's data, and the final image
// must be the source.
func TestSinkConnectionCuts(t *testing.T) {
	t.Run("copy", func(t *testing.T) { testSinkCuts(t, false) })
	t.Run("source", func(t *testing.T) { testSinkCuts(t, true) })
}

func testSinkCuts(t *testing.T, fromSource bool) {
	const size = 64 << 20
	// qemu-nbd, not nbdkit: nbdkit 1.32 aborts (raw_send_socket: Assertion
	// `sock >= 0') after a few hundred connection resets.
	srv := testenv.StartNBD(t, testenv.QemuNBD, testenv.NBDOptions{Size: size})
	proxy := startCutProxy(t, srv.Address, 1536<<10)
	src := halfZeroImage(3, size)
	ctx := testCtx(t)
	dc := &durableChecker{t: t, image: srv.Image, src: src}
	o := faultSinkOptions()
	o.OnDurable = dc.onDurable
	// One connection, so that each cut is one connection's worth of data
	// (a cut on one of several connections replaces them all), and a
	// buffer that a connection can resend before it is cut again.
	o.Connections = 1
	o.MaxUnflushed = 4 << 20
	if fromSource {
		o.Source = bytes.NewReader(src)
	}
	var s *Sink
	var err error
	for attempt := 0; attempt < 50; attempt++ { // the first dial may be cut too
		if s, err = NewSink(ctx, proxy.URI(), o); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t.Cleanup(func() { t.Logf("proxy dial error: %v", proxy.dialErr.Load()) })
	seen := int64(0)
	writeAll(t, ctx, s, src, 5, func() {
		if n := proxy.cuts.Load(); n != seen {
			seen = n
			dc.checkDurable(s)
		}
	})
	// Let the final flush go through a stable connection only if the
	// transfer already had its cuts.
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	dc.checkDurable(s)
	if n := proxy.cuts.Load(); n < 20 {
		t.Fatalf("only %d cuts; the test needs at least 20", n)
	}
	t.Logf("%d cuts, %d reconnects", proxy.cuts.Load(), s.Reconnects())
	if d := s.Durable(); len(d) != 1 || d[0] != (Extent{0, size}) {
		t.Fatalf("durable %v after Flush", d)
	}
	checkImage(t, srv.Image, src)
}

// TestSinkServerErrors writes through nbdkit's error filter (random EIO on
// writes and flushes, retried) and delay filter.
func TestSinkServerErrors(t *testing.T) {
	const size = 32 << 20
	srv := testenv.StartNBD(t, testenv.Nbdkit, testenv.NBDOptions{Size: size,
		Filters: []string{"error", "delay"},
		Args:    []string{"error=EIO", "error-pwrite-rate=10%", "error-zero-rate=10%", "delay-write=2ms", "delay-zero=1ms"}})
	src := halfZeroImage(4, size)
	ctx := testCtx(t)
	dc := &durableChecker{t: t, image: srv.Image, src: src}
	o := faultSinkOptions()
	o.OnDurable = dc.onDurable
	o.Retries = 20
	s, err := NewSink(ctx, srv.URI, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	writeAll(t, ctx, s, src, 6, nil)
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if dc.failed != nil {
		t.Fatal(dc.failed)
	}
	checkImage(t, srv.Image, src)
}

// TestSinkServerRestart kills the server mid-transfer and starts it again:
// the sink reconnects and finishes, and what it reported durable before the
// kill is in the file.
func TestSinkServerRestart(t *testing.T) {
	for _, kind := range []testenv.NBDServerKind{testenv.QemuNBD, testenv.NBDServer} {
		t.Run(string(kind), func(t *testing.T) {
			const size = 32 << 20
			// Unix sockets: over TCP, a reconnect attempt while the server
			// is down can be given the server's own port as its source
			// port and connect to itself (TCP simultaneous open), and
			// another process can take the port; either makes Restart
			// fail to bind.
			srv := testenv.StartNBD(t, kind, testenv.NBDOptions{Size: size, Unix: true})
			src := halfZeroImage(5, size)
			ctx := testCtx(t)
			dc := &durableChecker{t: t, image: srv.Image, src: src}
			o := faultSinkOptions()
			o.OnDurable = dc.onDurable
			s, err := NewSink(ctx, srv.URI, o)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			written := 0
			writeAll(t, ctx, s, src, 7, func() {
				written++
				if written == 5 || written == 15 {
					srv.Stop(t)
					dc.checkDurable(s)
					srv.Restart(t)
				}
			})
			if err := s.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			dc.checkDurable(s)
			// Each kill breaks the connection. (nbd-server seemed to
			// survive Stop only because Restart read the killed
			// daemon's stale PID file, which Stop now removes.)
			if s.Reconnects() < 2 {
				t.Errorf("%d reconnects after two restarts", s.Reconnects())
			}
			checkImage(t, srv.Image, src)
		})
	}
}
