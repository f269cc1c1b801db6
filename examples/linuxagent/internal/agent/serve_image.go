package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"

	"github.com/blockimage/blockimage/nbd"
)

func init() { serveImage = serveImageNBD }

// imageExport is the export name of a local image.
const imageExport = "image"

// servedImage is a local image served by the embedded NBD server on a
// private Unix socket, and the sink connected to it: a local target goes
// through the same NBD path as a remote one.
type servedImage struct {
	Target
	backend *nbd.FileBackend
	stop    context.CancelFunc
	served  chan error
	dir     string
}

func serveImageNBD(ctx context.Context, path string, src io.ReaderAt, diff bool) (Target, error) {
	backend, err := nbd.NewFileBackend(path)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "linuxagent-nbd-")
	if err != nil {
		backend.Close()
		return nil, err
	}
	sock := filepath.Join(dir, "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		backend.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("linuxagent: embedded NBD server: %w", err)
	}
	sctx, stop := context.WithCancel(context.Background())
	s := &servedImage{backend: backend, stop: stop, served: make(chan error, 1), dir: dir}
	srv := &nbd.Server{Backend: backend, Name: imageExport, MultiConn: true}
	go func() { s.served <- srv.Serve(sctx, l) }()
	uri := (&url.URL{Scheme: "nbd+unix", Path: "/" + imageExport, RawQuery: "socket=" + url.QueryEscape(sock)}).String()
	t, err := dialNBD(ctx, uri, src, diff)
	if err != nil {
		s.shutdown()
		return nil, fmt.Errorf("linuxagent: connecting to the embedded NBD server: %w", err)
	}
	s.Target = t
	return s, nil
}

func (s *servedImage) Close() error {
	return errors.Join(s.Target.Close(), s.shutdown())
}

func (s *servedImage) shutdown() error {
	s.stop()
	err := <-s.served
	err = errors.Join(err, s.backend.Close())
	os.RemoveAll(s.dir)
	return err
}
