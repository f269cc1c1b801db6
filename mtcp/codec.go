package mtcp

import (
	"bytes"
	"fmt"
	"sort"
	"sync"

	"github.com/ulikunitz/xz/lzma"
)

// An Encoder compresses one chunk into raw LZMA2 data, end marker
// included, appended to dst, using at most the dictionary size of the
// level (PresetFor). The package frames it into an .xz Block.
type Encoder interface {
	EncodeLZMA2(dst, src []byte) ([]byte, error)
}

// A CodecFunc returns an Encoder for a level; a child calls it once and
// encodes every chunk it receives with the result.
type CodecFunc func(level int) (Encoder, error)

var (
	codecMu sync.Mutex
	codecs  = map[string]CodecFunc{"go": newGoEncoder}
)

// RegisterCodec makes a codec available by name to Options.Codec, in
// the control process and in the children (which are the same binary).
// Call it from an init function; registering a name twice panics.
func RegisterCodec(name string, fn CodecFunc) {
	codecMu.Lock()
	defer codecMu.Unlock()
	if _, dup := codecs[name]; dup {
		panic("mtcp: codec " + name + " registered twice")
	}
	codecs[name] = fn
}

func lookupCodec(name string) (CodecFunc, bool) {
	codecMu.Lock()
	defer codecMu.Unlock()
	fn, ok := codecs[name]
	return fn, ok
}

func codecNames() []string {
	codecMu.Lock()
	defer codecMu.Unlock()
	var names []string
	for n := range codecs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// goEncoder is github.com/ulikunitz/xz's LZMA2 writer.
type goEncoder struct {
	cfg lzma.Writer2Config
	buf bytes.Buffer
}

func newGoEncoder(level int) (Encoder, error) {
	p, err := PresetFor(level)
	if err != nil {
		return nil, err
	}
	cfg := lzma.Writer2Config{
		Properties: &lzma.Properties{LC: 3, LP: 0, PB: 2},
		DictCap:    int(p.DictSize),
		Matcher:    lzma.HashTable4,
	}
	if err := cfg.Verify(); err != nil {
		return nil, fmt.Errorf("mtcp: go codec: %w", err)
	}
	return &goEncoder{cfg: cfg}, nil
}

func (e *goEncoder) EncodeLZMA2(dst, src []byte) ([]byte, error) {
	e.buf.Reset()
	w, err := e.cfg.NewWriter2(&e.buf)
	if err != nil {
		return dst, err
	}
	if _, err := w.Write(src); err != nil {
		return dst, err
	}
	if err := w.Close(); err != nil {
		return dst, err
	}
	return append(dst, e.buf.Bytes()...), nil
}
