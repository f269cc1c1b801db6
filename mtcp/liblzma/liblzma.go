//go:build cgo

package liblzma

/*
#cgo LDFLAGS: -llzma
#include <lzma.h>
#include <stdint.h>

// encode compresses in into raw LZMA2 (end marker included) with the xz
// preset's options.
static int mtcp_encode(uint32_t preset, const uint8_t *in, size_t in_size,
		uint8_t *out, size_t *out_pos, size_t out_size) {
	lzma_options_lzma opt;
	if (lzma_lzma_preset(&opt, preset))
		return LZMA_OPTIONS_ERROR;
	lzma_filter filters[2] = {
		{ .id = LZMA_FILTER_LZMA2, .options = &opt },
		{ .id = LZMA_VLI_UNKNOWN, .options = NULL },
	};
	return lzma_raw_buffer_encode(filters, NULL, in, in_size, out, out_pos, out_size);
}
*/
import "C"

import (
	"fmt"
	"unsafe"

	"github.com/blockimage/blockimage/mtcp"
)

func init() { mtcp.RegisterCodec(Name, NewEncoder) }

// Available reports whether the codec can run (true: built with cgo).
func Available() bool { return true }

type encoder struct{ level int }

// NewEncoder returns liblzma's raw LZMA2 encoder for an xz level 0..9.
func NewEncoder(level int) (mtcp.Encoder, error) {
	if _, err := mtcp.PresetFor(level); err != nil {
		return nil, err
	}
	return encoder{level: level}, nil
}

// EncodeLZMA2 appends the raw LZMA2 data of src to dst.
func (e encoder) EncodeLZMA2(dst, src []byte) ([]byte, error) {
	bound := mtcp.BlockBound(len(src))
	start := len(dst)
	if cap(dst)-start < bound {
		nd := make([]byte, start, start+bound)
		copy(nd, dst)
		dst = nd
	}
	out := dst[start : start+bound]
	var in *C.uint8_t
	if len(src) > 0 {
		in = (*C.uint8_t)(unsafe.Pointer(&src[0]))
	}
	var pos C.size_t
	ret := C.mtcp_encode(C.uint32_t(e.level), in, C.size_t(len(src)),
		(*C.uint8_t)(unsafe.Pointer(&out[0])), &pos, C.size_t(len(out)))
	if ret != C.LZMA_OK {
		return dst, fmt.Errorf("mtcp/liblzma: lzma_raw_buffer_encode: error %d", int(ret))
	}
	return dst[:start+int(pos)], nil
}
