package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/blockimage/blockimage/blockdev"
	"github.com/blockimage/blockimage/examples/linuxagent/internal/agentapi"
	"github.com/blockimage/blockimage/fsparse"
	"github.com/blockimage/blockimage/internal/testenv"
)

func TestMain(m *testing.M) {
	blockdev.Main() // the freeze watchdog runs here when re-executed
	testenv.Main(m)
}

// sameInUse compares the image at imagePath with want (a device or a
// snapshot of it) on every block the filesystem in want uses, and returns
// the number of differing 4 KiB blocks and the bytes compared.
func sameInUse(t *testing.T, want, imagePath string) (mismatches int, compared int64) {
	t.Helper()
	w, err := blockdev.Open(want, os.O_RDONLY|directIfDevice(want))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	img, err := os.Open(imagePath)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	_, extents, err := fsparse.InUse(context.Background(), w, w.Size())
	if err != nil {
		t.Fatalf("mapping %s: %v", want, err)
	}
	a, b := make([]byte, 1<<20), make([]byte, 1<<20)
	for _, e := range extents {
		for off := e.Offset; off < e.End(); {
			n := min(int64(len(a)), e.End()-off)
			if _, err := w.ReadAt(a[:n], off); err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			if _, err := img.ReadAt(b[:n], off); err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			for i := int64(0); i < n; i += 4096 {
				j := min(i+4096, n)
				if !bytes.Equal(a[i:j], b[i:j]) {
					if mismatches < 5 {
						t.Errorf("block at %d differs", off+i)
					}
					mismatches++
				}
			}
			compared += n
			off += n
		}
	}
	return mismatches, compared
}

func directIfDevice(path string) int {
	if isRegularFile(path) {
		return 0
	}
	return syscall.O_DIRECT
}

// cuttingProxy forwards TCP connections to an NBD server and cuts them
// (both directions, abruptly) each time a random amount of data between
// minCut and maxCut has gone to the server, cuts times in all. After the
// cut numbered restartAt it asks the test to restart the server.
type cuttingProxy struct {
	l               net.Listener
	server          string
	rng             *rand.Rand
	minCut, maxCut  int64
	cutsLeft        int
	restartAt       int
	restart         chan chan struct{} // the test restarts, then closes the inner channel
	replies         bool               // count the bytes from the server too
	mu              sync.Mutex
	cuts            int
	sinceCut, limit int64
}

func newCuttingProxy(t *testing.T, server string, cuts, restartAt int, minCut, maxCut int64) *cuttingProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cuttingProxy{l: l, server: server, rng: rand.New(rand.NewPCG(uint64(cuts), 9)), minCut: minCut, maxCut: maxCut,
		cutsLeft: cuts, restartAt: restartAt, restart: make(chan chan struct{})}
	p.limit = p.nextLimit()
	t.Cleanup(func() { l.Close() })
	go p.accept()
	return p
}

func (p *cuttingProxy) nextLimit() int64 { return p.minCut + p.rng.Int64N(p.maxCut-p.minCut) }

func (p *cuttingProxy) accept() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.server)
		if err != nil {
			c.Close() // the server is down: the client retries
			continue
		}
		go p.pipe(c, s)
	}
}

func (p *cuttingProxy) pipe(c, s net.Conn) {
	done := make(chan struct{})
	cut := func() { c.Close(); s.Close() }
	go func() {
		if p.replies {
			p.copyCounting(c, s)
		} else {
			io.Copy(c, s)
		}
		cut()
		close(done)
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := s.Write(buf[:n]); werr != nil {
				break
			}
			if p.count(int64(n)) {
				break
			}
		}
		if err != nil {
			break
		}
	}
	cut()
	<-done
}

// copyCounting copies the server's replies to the client, counting them
// like the requests.
func (p *cuttingProxy) copyCounting(c, s net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := s.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil || p.count(int64(n)) {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// count records n bytes sent to the server and reports whether to cut
// now; at the restart cut it waits for the test to restart the server.
func (p *cuttingProxy) count(n int64) bool {
	p.mu.Lock()
	p.sinceCut += n
	if p.cutsLeft == 0 || p.sinceCut < p.limit {
		p.mu.Unlock()
		return false
	}
	p.cutsLeft--
	p.cuts++
	p.sinceCut, p.limit = 0, p.nextLimit()
	restart := p.cuts == p.restartAt
	p.mu.Unlock()
	if restart {
		done := make(chan struct{})
		p.restart <- done
		<-done
	}
	return true
}

func (p *cuttingProxy) uri() string {
	return fmt.Sprintf("nbd://%s/%s", p.l.Addr(), testenv.ExportName)
}

// runThroughFaults runs a backup through proxy, restarting srv whenever
// the proxy asks for it, and returns the backup's result and error, how
// many times the proxy cut the connection, and whether srv restarted.
func runThroughFaults(t *testing.T, proxy *cuttingProxy, srv *testenv.NBD, req agentapi.BackupRequest) (res agentapi.Result, cuts int, restarted bool, err error) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		var err error
		res, err = System.Run(context.Background(), Backup{Request: req})
		done <- err
	}()
	for {
		select {
		case ack := <-proxy.restart:
			srv.Restart(t)
			restarted = true
			close(ack)
			continue
		case err = <-done:
		}
		break
	}
	proxy.mu.Lock()
	cuts = proxy.cuts
	proxy.mu.Unlock()
	return res, cuts, restarted, err
}

// TestNetworkFaultsDuringFullBackup cuts the connection to the NBD
// server six times at random points of a full backup of a 1 GiB device
// and restarts the server once: the backup resumes each time and the
// image is exact.
func TestNetworkFaultsDuringFullBackup(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.LoopDevices, testenv.Mkfs("ext4"), testenv.Commands("qemu-nbd"))
	testenv.Exclusive(t, "ftrace") // the backup traces the device
	const size = 1 << 30
	dev := testenv.NewFilesystem(t, "ext4", size)
	testenv.FillFiles(t, dev.MountPoint, testenv.FillOptions{Seed: 1, Files: 24, MaxSize: 16 << 20})
	dev.Unmount(t)
	srv := testenv.StartNBD(t, testenv.QemuNBD, testenv.NBDOptions{Size: size})
	proxy := newCuttingProxy(t, srv.Address, 6, 3, 4<<20, 24<<20)

	res, cuts, restarted, err := runThroughFaults(t, proxy, srv, backupRequest(dev.Path, proxy.uri()))
	if err != nil {
		t.Fatalf("backup through the faulty network: %v", err)
	}
	t.Logf("result: %+v", res)
	if cuts < 5 || !restarted {
		t.Fatalf("only %d cuts (restart: %v): the backup was too small to test the faults", cuts, restarted)
	}
	srv.Stop(t)
	bad, compared := sameInUse(t, dev.Path, srv.Image)
	if bad != 0 {
		t.Fatalf("%d of %d in-use blocks differ after %d cuts and a server restart", bad, compared/4096, cuts)
	}
	t.Logf("%d cuts and a server restart: %d MiB in use, exact", cuts, compared>>20)
}

// TestNetworkFaultsDuringDiffBackup cuts the connection while a diff
// backup reads the target (cut on the bytes of the replies too) and
// restarts the server once: the diff reconnects, resends what no flush
// covered, and the image is exact. qemu-nbd serves one client at a time,
// so the diff's reads and writes must share a connection.
func TestNetworkFaultsDuringDiffBackup(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.LoopDevices, testenv.Mkfs("ext4"), testenv.Mountable("ext4"), testenv.Commands("qemu-nbd"))
	testenv.Exclusive(t, "ftrace") // the backup traces the device
	const size = 256 << 20
	dev := testenv.NewFilesystem(t, "ext4", size)
	testenv.FillFiles(t, dev.MountPoint, testenv.FillOptions{Seed: 2, Files: 16, MaxSize: 8 << 20})
	base := filepath.Join(t.TempDir(), "base.img")
	if _, err := System.Run(context.Background(), Backup{Request: backupRequest(dev.Path, base)}); err != nil {
		t.Fatalf("full backup: %v", err)
	}
	// Change a part of the filesystem, then diff through the faults.
	testenv.FillFiles(t, dev.MountPoint, testenv.FillOptions{Seed: 3, Files: 8, MaxSize: 4 << 20})
	dev.Unmount(t)
	srv := testenv.StartNBD(t, testenv.QemuNBD, testenv.NBDOptions{Image: base})
	proxy := newCuttingProxy(t, srv.Address, 5, 2, 2<<20, 12<<20)
	proxy.replies = true
	req := backupRequest(dev.Path, proxy.uri())
	req.Mode = agentapi.Diff
	res, cuts, restarted, err := runThroughFaults(t, proxy, srv, req)
	if err != nil {
		t.Fatalf("diff through the faulty network: %v", err)
	}
	if cuts < 3 || !restarted {
		t.Fatalf("only %d cuts (restart: %v): the diff was too small to test the faults", cuts, restarted)
	}
	if res.BytesSent >= res.BytesInUse {
		t.Errorf("the diff sent %d bytes of %d in use: it did not skip what the target holds", res.BytesSent, res.BytesInUse)
	}
	srv.Stop(t)
	bad, compared := sameInUse(t, dev.Path, srv.Image)
	if bad != 0 {
		t.Fatalf("%d of %d in-use blocks differ after %d cuts and a server restart", bad, compared/4096, cuts)
	}
	t.Logf("%d cuts and a server restart: diff sent %d of %d MiB in use, exact", cuts, res.BytesSent>>20, compared>>20)
}
