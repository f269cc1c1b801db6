package nbd_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"

	"github.com/blockimage/blockimage/nbd"
)

func ExampleParseURI() {
	t, err := nbd.ParseURI("nbd+unix:///disk0?socket=/run/nbd.sock")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(t.Network, t.Address, t.Export)
	t, _ = nbd.ParseURI("nbds://backup.example.com/disk0")
	fmt.Println(t.Network, t.Address, t.Export, t.TLS)
	// Output:
	// unix /run/nbd.sock disk0
	// tcp backup.example.com:10809 disk0 true
}

// serveTemp serves a new sparse file of size over TCP with nbd.Server and
// returns its URI.
func serveTemp(ctx context.Context, dir string, size int64) string {
	path := filepath.Join(dir, "target.img")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		log.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		log.Fatal(err)
	}
	backend, err := nbd.NewFileBackend(path)
	if err != nil {
		log.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := &nbd.Server{Backend: backend, Name: "backup", MultiConn: true}
	go srv.Serve(ctx, l)
	return "nbd://" + l.Addr().String() + "/backup"
}

// A backup writes extents to a Sink and learns which are durable.
func ExampleSink() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, _ := os.MkdirTemp("", "nbd-example")
	defer os.RemoveAll(dir)
	uri := serveTemp(ctx, dir, 4<<20)

	sink, err := nbd.NewSink(ctx, uri, nbd.SinkOptions{
		OnDurable: func(es []nbd.Extent) { fmt.Println("durable:", es) },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer sink.Close()
	block := bytes.Repeat([]byte("blockimage"), 6554)[:64<<10]
	if err := sink.WriteAt(ctx, block, 0); err != nil {
		log.Fatal(err)
	}
	// All-zero blocks become WRITE_ZEROES (by default), not data.
	if err := sink.WriteAt(ctx, make([]byte, 1<<20), 1<<20); err != nil {
		log.Fatal(err)
	}
	if err := sink.Flush(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println(sink.Durable())
	// Output:
	// durable: [{0 65536} {1048576 1048576}]
	// [{0 65536} {1048576 1048576}]
}

// A client reads which parts of an export hold data.
func ExampleClient_BlockStatus() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, _ := os.MkdirTemp("", "nbd-example")
	defer os.RemoveAll(dir)
	uri := serveTemp(ctx, dir, 4<<20)

	c, err := nbd.Dial(ctx, uri, nbd.Options{MetaContexts: []string{"base:allocation"}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if err := c.WriteAt(ctx, bytes.Repeat([]byte{1}, 1<<20), 1<<20); err != nil {
		log.Fatal(err)
	}
	ext, err := c.BlockStatus(ctx, "base:allocation", 0, c.Size())
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range ext {
		fmt.Printf("%d+%d hole=%v\n", e.Offset, e.Length, e.Flags&nbd.StateHole != 0)
	}
	// Output:
	// 0+1048576 hole=true
	// 1048576+1048576 hole=false
	// 2097152+2097152 hole=true
}
