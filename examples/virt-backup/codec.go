package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/blockimage/blockimage/mtcp"
	"github.com/blockimage/blockimage/virt"
)

// A codec compresses stored disk images. The stored file of a compressed
// disk carries its codec's extension.
type codec interface {
	name() string // as recorded in the metadata
	ext() string
	newWriter(ctx context.Context, w io.Writer) (io.WriteCloser, error)
	newReader(ctx context.Context, f *os.File) (io.Reader, error)
}

func codecFor(name string, level int, logf func(string, ...any)) (codec, error) {
	switch name {
	case virt.CompressionNone:
		return nil, nil
	case virt.CompressionLZMA:
		return lzmaCodec{level: level, logf: logf}, nil
	}
	return nil, fmt.Errorf("unknown compression %q (none or lzma)", name)
}

// lzmaCodec writes .xz files with mtcp's child processes.
type lzmaCodec struct {
	level int
	logf  func(string, ...any)
}

func (lzmaCodec) name() string { return virt.CompressionLZMA }
func (lzmaCodec) ext() string  { return ".xz" }

func (c lzmaCodec) newWriter(ctx context.Context, w io.Writer) (io.WriteCloser, error) {
	return mtcp.NewWriter(ctx, w, mtcp.Options{Level: c.level, Codec: lzmaCodecName, Logf: c.logf})
}

func (lzmaCodec) newReader(ctx context.Context, f *os.File) (io.Reader, error) {
	return mtcp.NewReader(ctx, f, mtcp.ReaderOptions{})
}
