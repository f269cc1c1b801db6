package iox

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestCounting(t *testing.T) {
	r := &CountingReader{R: strings.NewReader("hello, world")}
	var buf bytes.Buffer
	w := &CountingWriter{W: &buf}
	if _, err := io.Copy(w, r); err != nil {
		t.Fatal(err)
	}
	if r.N != 12 || w.N != 12 || buf.String() != "hello, world" {
		t.Fatalf("read %d, wrote %d: %q", r.N, w.N, buf.String())
	}
}

func TestContextReader(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r := ContextReader{Ctx: ctx, R: strings.NewReader("abc")}
	p := make([]byte, 1)
	if n, err := r.Read(p); n != 1 || err != nil {
		t.Fatalf("before cancel: %d, %v", n, err)
	}
	cancel()
	if _, err := r.Read(p); !errors.Is(err, context.Canceled) {
		t.Fatalf("after cancel: err %v, want context.Canceled", err)
	}
}
