package mtcp

import (
	"errors"
	"fmt"
	"log"
)

const (
	// MinChunkSize and MaxChunkSize bound Options.ChunkSize; SIZE in the
	// protocol is 32 bits and a Block of a chunk must fit in it.
	MinChunkSize = 64 << 10
	MaxChunkSize = 1 << 30

	// reservedMemory is what the design keeps back for the rest of the
	// system before dividing memory among children.
	reservedMemory = 256 << 20
)

// Preset is what the xz(1) man page lists for a compression level.
type Preset struct {
	DictSize      uint32 // LZMA2 dictionary
	CompressorMem int64  // compressor memory of xz at this level
}

// presets follow the table of xz(1), "-0 ... -9".
var presets = [10]Preset{
	{256 << 10, 3 << 20},
	{1 << 20, 9 << 20},
	{2 << 20, 17 << 20},
	{4 << 20, 32 << 20},
	{4 << 20, 48 << 20},
	{8 << 20, 94 << 20},
	{8 << 20, 94 << 20},
	{16 << 20, 186 << 20},
	{32 << 20, 370 << 20},
	{64 << 20, 674 << 20},
}

// PresetFor returns the xz(1) figures for level 0..9.
func PresetFor(level int) (Preset, error) {
	if level < 0 || level > 9 {
		return Preset{}, fmt.Errorf("mtcp: compression level %d out of range 0..9", level)
	}
	return presets[level], nil
}

// Options configure a [Writer]. The zero value works (xz -0 with the Go codec,
// children chosen from memory and CPUs); each field says its default.
type Options struct {
	// Level is the xz preset, 0..9, taken literally: the zero value is
	// -0, the fastest; xz's own default is 6. The Go codec has no presets
	// of its own: it uses the level's dictionary size and a hash-chain
	// match finder.
	Level int
	// Children is the number of child processes. 0 chooses
	// min((total memory - 256 MiB) / per-child memory, available CPUs),
	// at least 1, where total memory is the cgroup limit when there is one
	// and per-child memory is the xz(1) compressor memory for the level
	// plus the chunk buffers. A larger explicit value is used, with a
	// warning through Logf.
	Children int
	// ChunkSize is the uncompressed size of each chunk (one Block), in
	// bytes. Default: 3 × the level's dictionary size, at least 1 MiB,
	// as xz -T does. Limits MinChunkSize..MaxChunkSize.
	ChunkSize int
	// Codec names the child's compressor: "go" (default, pure Go) or a
	// codec registered with RegisterCodec, such as "liblzma" when the
	// package mtcp/liblzma is imported.
	Codec string
	// Progress, when set, is called after each Block is written, with
	// the input bytes consumed so far and the compressed bytes written.
	// It runs on the pool's goroutine, not the caller's: keep it short.
	Progress func(in, out int64)
	// Logf receives warnings (an override of the child count beyond what
	// memory allows, a child that died). Default: log.Printf.
	Logf func(format string, args ...any)
}

// ErrUnknownCodec is returned for a Codec name nobody registered.
var ErrUnknownCodec = errors.New("mtcp: unknown codec")

// withDefaults validates o and fills in defaults; it does not choose the
// child count, which needs the machine's resources.
func (o Options) withDefaults() (Options, error) {
	p, err := PresetFor(o.Level)
	if err != nil {
		return o, err
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = max(3*int(p.DictSize), 1<<20)
	}
	if o.ChunkSize < MinChunkSize || o.ChunkSize > MaxChunkSize {
		return o, fmt.Errorf("mtcp: chunk size %d out of range %d..%d", o.ChunkSize, MinChunkSize, MaxChunkSize)
	}
	if o.Codec == "" {
		o.Codec = "go"
	}
	fn, ok := lookupCodec(o.Codec)
	if !ok {
		return o, fmt.Errorf("%w %q (registered: %v)", ErrUnknownCodec, o.Codec, codecNames())
	}
	// Creating an encoder is cheap (memory is taken per chunk); doing it
	// here reports an unusable codec before any child starts.
	if _, err := fn(o.Level); err != nil {
		return o, err
	}
	if o.Children < 0 {
		return o, fmt.Errorf("mtcp: negative child count %d", o.Children)
	}
	if o.Logf == nil {
		o.Logf = log.Printf
	}
	return o, nil
}

// perChildMemory is what one child needs: the compressor's memory at the
// level, its input chunk and the compressed Blocks it may hold (maxHeld
// and the one it compresses).
func perChildMemory(level, chunkSize int) int64 {
	return presets[level].CompressorMem + int64(chunkSize) + int64(maxHeld+1)*int64(BlockBound(chunkSize))
}

// ChildCount returns how many children fit: (memory - 256 MiB) / per-child
// memory, no more than cpus, at least 1.
// A negative memory means unknown: CPUs alone decide.
func ChildCount(memory int64, cpus int, level, chunkSize int) int {
	n := cpus
	if memory >= 0 {
		n = min(n, int((memory-reservedMemory)/perChildMemory(level, chunkSize)))
	}
	return max(n, 1)
}
