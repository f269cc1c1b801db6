package nbd

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blockimage/blockimage/internal/testenv"
)

type testServer struct {
	URI, Image string
	srv        *Server
}

// startOurServer serves a new sparse file of size with our Server.
func startOurServer(t *testing.T, size int64, unix bool, configure func(*Server)) *testServer {
	t.Helper()
	dir := testenv.TempDir(t)
	image := filepath.Join(dir, "served.img")
	if err := os.WriteFile(image, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(image, size); err != nil {
		t.Fatal(err)
	}
	b, err := NewFileBackend(image)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Backend: b, Name: "test", MultiConn: true}
	if configure != nil {
		configure(s)
	}
	var l net.Listener
	var uri string
	if unix {
		sock := filepath.Join(dir, "nbd.sock")
		l, err = net.Listen("unix", sock)
		uri = "nbd+unix:///test?socket=" + sock
	} else {
		l, err = net.Listen("tcp", "127.0.0.1:0")
		if err == nil {
			uri = "nbd://" + l.Addr().String() + "/test"
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.Serve(ctx, l); err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait(); b.Close() })
	return &testServer{URI: uri, Image: image, srv: s}
}

func TestServerWithOurClient(t *testing.T) {
	for _, tc := range []struct {
		name       string
		unix, nosr bool
	}{{"tcp", false, false}, {"unix", true, false}, {"tcp-no-sr", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startOurServer(t, 16<<20, tc.unix, nil)
			ctx := testCtx(t)
			c, err := Dial(ctx, ts.URI, Options{NoStructuredReplies: tc.nosr, MetaContexts: []string{"base:allocation"}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if c.Connections() != 4 || c.StructuredReplies() == tc.nosr {
				t.Errorf("connections %d, structured %v", c.Connections(), c.StructuredReplies())
			}
			exerciseClient(t, ctx, c, ts.Image)
			if tc.nosr {
				return
			}
			// Block status from the file's holes: trim a range and see it.
			if err := c.WriteZeroes(ctx, 12<<20, 1<<20); err != nil {
				t.Fatal(err)
			}
			ext, err := c.BlockStatus(ctx, "base:allocation", 12<<20, 2<<20)
			if err != nil {
				t.Fatal(err)
			}
			if len(ext) == 0 || ext[0].Flags != StateHole|StateZero || ext[0].Length != 1<<20 {
				t.Fatalf("block status after punching 1 MiB: %+v", ext)
			}
		})
	}
}

// TestServerBadRequests sends requests a server must refuse: each gets an
// error and the connection stays in sync.
func TestServerBadRequests(t *testing.T) {
	ts := startOurServer(t, 1<<20, false, func(s *Server) { s.MaxPayload = 64 << 10 })
	ctx := testCtx(t)
	c, err := Dial(ctx, ts.URI, Options{Connections: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cn := c.conns[0]
	raw := func(cmd, flags uint16, off int64, length uint32, payload []byte) error {
		r := &request{cmd: cmd, off: off, length: length}
		if cmd == cmdRead {
			r.dst = make([]byte, length)
		}
		if err := cn.start(ctx, r, flags, payload); err != nil {
			t.Fatal(err)
		}
		return cn.wait(ctx, r)
	}
	want := func(name string, err error, errno uint32) {
		t.Helper()
		var ne *Error
		if !errors.As(err, &ne) || ne.Errno != errno {
			t.Errorf("%s: got %v, want %s", name, err, errnoName(errno))
		}
	}
	// An unknown command with a length: it has no payload; if the server
	// skipped "length" bytes as go-nbd's does, the next request would be
	// swallowed.
	want("unknown command", raw(42, 0, 0, 4096, nil), errnoEINVAL)
	want("write past the end", raw(cmdWrite, 0, 1<<20-512, 1024, make([]byte, 1024)), errnoENOSPC)
	want("write over max payload", raw(cmdWrite, 0, 0, 128<<10, make([]byte, 128<<10)), errnoEINVAL)
	want("read over max payload", raw(cmdRead, 0, 0, 128<<10, nil), errnoEINVAL)
	want("unknown flag", raw(cmdRead, 1<<9, 0, 512, nil), errnoEINVAL)
	want("block status without context", raw(cmdBlockStatus, 0, 0, 512, nil), errnoEINVAL)
	want("flush with a length", raw(cmdFlush, 0, 0, 512, nil), errnoEINVAL)
	p := randBytes(5, 4096)
	if err := c.WriteAt(ctx, p, 8192); err != nil {
		t.Fatalf("connection out of sync after bad requests: %v", err)
	}
	got := make([]byte, 4096)
	if err := c.ReadAt(ctx, got, 8192); err != nil || firstDiff(got, p) >= 0 {
		t.Fatalf("read back after bad requests: %v", err)
	}
}

func TestServerReadOnly(t *testing.T) {
	ts := startOurServer(t, 1<<20, true, func(s *Server) { s.ReadOnly = true })
	ctx := testCtx(t)
	c, err := Dial(ctx, ts.URI, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Flags()&FlagReadOnly == 0 {
		t.Fatal("read-only flag not advertised")
	}
	r := &request{cmd: cmdWrite, off: 0, length: 512}
	if err := c.conns[0].start(ctx, r, 0, make([]byte, 512)); err != nil {
		t.Fatal(err)
	}
	var ne *Error
	if err := c.conns[0].wait(ctx, r); !errors.As(err, &ne) || ne.Errno != errnoEPERM {
		t.Fatalf("write to a read-only export: %v", err)
	}
	if _, err := Dial(ctx, strings.Replace(ts.URI, "/test?", "/other?", 1), Options{}); err == nil {
		t.Fatal("unknown export accepted")
	}
}

func selfSigned(t *testing.T) (*tls.Config, *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}, pool
}

// TestTLS negotiates NBD_OPT_STARTTLS with our server, which requires it.
func TestTLS(t *testing.T) {
	srvCfg, pool := selfSigned(t)
	ts := startOurServer(t, 16<<20, false, func(s *Server) { s.TLSConfig, s.TLSRequired = srvCfg, true })
	ctx := testCtx(t)
	if _, err := Dial(ctx, ts.URI, Options{}); err == nil || !strings.Contains(err.Error(), "requires TLS") {
		t.Fatalf("plain connection to a TLS-only server: %v", err)
	}
	tlsURI := strings.Replace(ts.URI, "nbd://", "nbds://", 1)
	if _, err := Dial(ctx, tlsURI, Options{}); err == nil {
		t.Fatal("untrusted certificate accepted")
	}
	c, err := Dial(ctx, tlsURI, Options{TLSConfig: &tls.Config{RootCAs: pool}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.conns[0].nc.(*tls.Conn); !ok {
		t.Fatal("connection is not TLS")
	}
	exerciseClient(t, ctx, c, ts.Image)
}

// TestServerTools checks our server with nbdinfo, nbdcopy and qemu-img.
func TestServerTools(t *testing.T) {
	testenv.Require(t, testenv.Commands("nbdinfo", "nbdcopy", "qemu-img"))
	const size = 32 << 20
	ts := startOurServer(t, size, false, nil)
	ctx := testCtx(t)
	run := func(name string, args ...string) []byte {
		t.Helper()
		out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return out
	}
	var info struct {
		Exports []struct {
			Size       int64 `json:"export-size"`
			CanFlush   bool  `json:"can_flush"`
			CanFUA     bool  `json:"can_fua"`
			CanTrim    bool  `json:"can_trim"`
			CanZero    bool  `json:"can_zero"`
			CanMulti   bool  `json:"can_multi_conn"`
			Structured bool  `json:"structured"`
		} `json:"exports"`
	}
	out := run("nbdinfo", "--json", ts.URI)
	if err := json.Unmarshal(out, &info); err != nil || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo: %v\n%s", err, out)
	}
	e := info.Exports[0]
	if e.Size != size || !e.CanFlush || !e.CanFUA || !e.CanTrim || !e.CanZero || !e.CanMulti {
		t.Errorf("nbdinfo sees %+v", e)
	}
	dir := testenv.TempDir(t)
	src := filepath.Join(dir, "src.img")
	if err := os.WriteFile(src, halfZeroImage(11, size), 0o644); err != nil {
		t.Fatal(err)
	}
	run("nbdcopy", "--flush", src, ts.URI)
	checkImage(t, ts.Image, mustRead(t, src))
	run("qemu-img", "compare", "-f", "raw", "-F", "raw", src, ts.URI)
	back := filepath.Join(dir, "back.img")
	run("qemu-img", "convert", "-f", "raw", "-O", "raw", ts.URI, back)
	checkImage(t, back, mustRead(t, src))
	// qemu-img writing to our server, then nbdinfo --map over holes.
	src2 := filepath.Join(dir, "src2.img")
	if err := os.WriteFile(src2, randBytes(12, size), 0o644); err != nil {
		t.Fatal(err)
	}
	run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src2, ts.URI)
	run("qemu-img", "compare", "-f", "raw", "-F", "raw", src2, ts.URI)
	checkImage(t, ts.Image, mustRead(t, src2))
	// Zero the second half through qemu-img (WRITE_ZEROES, punched) and
	// read the map back with nbdinfo: base:allocation from SEEK_HOLE.
	zero := filepath.Join(dir, "zero.img")
	if err := os.Truncate(zero, 0); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if err := os.WriteFile(zero, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(zero, size); err != nil {
		t.Fatal(err)
	}
	run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", zero, ts.URI)
	var st syscall.Stat_t
	if err := syscall.Stat(ts.Image, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 >= size/2 {
		t.Errorf("served file still has %d bytes allocated after zeroing", st.Blocks*512)
	}
	m := string(run("nbdinfo", "--map", ts.URI))
	if !strings.Contains(m, "hole,zero") {
		t.Errorf("nbdinfo --map shows no hole:\n%s", m)
	}
}

func mustRead(t *testing.T, path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTLSNbdkit negotiates STARTTLS with nbdkit (GnuTLS) requiring TLS.
func TestTLSNbdkit(t *testing.T) {
	srvCfg, pool := selfSigned(t)
	dir := testenv.TempDir(t)
	cert := srvCfg.Certificates[0]
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
	for name, data := range map[string][]byte{
		"ca-cert.pem":     certPEM,
		"server-cert.pem": certPEM,
		"server-key.pem":  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	srv := testenv.StartNBD(t, testenv.Nbdkit, testenv.NBDOptions{Size: 16 << 20,
		Args: []string{"--tls=require", "--tls-certificates=" + dir}})
	ctx := testCtx(t)
	if _, err := Dial(ctx, srv.URI, Options{}); err == nil {
		t.Fatal("plain connection to nbdkit --tls=require succeeded")
	}
	c, err := Dial(ctx, strings.Replace(srv.URI, "nbd://", "nbds://", 1), Options{TLSConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	exerciseClient(t, ctx, c, srv.Image)
}
