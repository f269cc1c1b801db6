//go:build !cgo

package liblzma

import "github.com/blockimage/blockimage/mtcp"

// The codec is registered without cgo too, so that asking for it gives
// ErrUnavailable rather than an unknown-codec error.
func init() { mtcp.RegisterCodec(Name, NewEncoder) }

// Available reports whether the codec can run (false: built without cgo).
func Available() bool { return false }

// NewEncoder returns ErrUnavailable: this binary was built without cgo.
func NewEncoder(level int) (mtcp.Encoder, error) { return nil, ErrUnavailable }
