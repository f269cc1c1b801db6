// Package liblzma registers the codec "liblzma" with mtcp: the children
// of an mtcp.Writer with Options.Codec "liblzma" compress each chunk with
// liblzma's raw LZMA2 encoder (lzma_raw_buffer_encode with the xz preset
// of the level, see xz(1)), several times faster than the pure-Go codec
// and with xz's own compression ratio.
//
// Import it for its side effect in the program that creates the Writer;
// the children are the same binary, so they have the codec too:
//
//	import _ "github.com/blockimage/blockimage/mtcp/liblzma"
//
// It needs cgo and liblzma's headers (Debian: liblzma-dev). Built with
// CGO_ENABLED=0 the package still compiles, and the codec reports
// ErrUnavailable when a Writer asks for it.
package liblzma

import "errors"

// ErrUnavailable is returned when the binary was built without cgo.
var ErrUnavailable = errors.New("mtcp/liblzma: liblzma codec unavailable: built without cgo")

// Name is the codec name to put in mtcp.Options.Codec.
const Name = "liblzma"
