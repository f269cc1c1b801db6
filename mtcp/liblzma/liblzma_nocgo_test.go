//go:build !cgo

package liblzma_test

import (
	"context"
	"errors"
	"io"
	"testing"

	"github.com/blockimage/blockimage/mtcp"
	"github.com/blockimage/blockimage/mtcp/liblzma"
)

func TestUnavailableWithoutCgo(t *testing.T) {
	_, err := mtcp.NewWriter(context.Background(), io.Discard, mtcp.Options{Codec: liblzma.Name})
	if !errors.Is(err, liblzma.ErrUnavailable) {
		t.Fatalf("NewWriter with the liblzma codec and no cgo: %v, want ErrUnavailable", err)
	}
}
