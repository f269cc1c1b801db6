//go:build cgo

package liblzma

/*
#cgo LDFLAGS: -llzma
#include <lzma.h>
#include <stdint.h>
#include <stdlib.h>

// mtcp_stream returns a zeroed lzma_stream (LZMA_STREAM_INIT) in C memory.
static lzma_stream *mtcp_stream(void) {
	return calloc(1, sizeof(lzma_stream));
}

// mtcp_encode compresses in into raw LZMA2 (end marker included) with the
// xz preset's options. Re-initialising the same stream lets liblzma reuse
// its match-finder memory from chunk to chunk instead of allocating and
// faulting it in again. No Go pointer stays in the stream after return.
static int mtcp_encode(lzma_stream *strm, uint32_t preset, const uint8_t *in, size_t in_size,
		uint8_t *out, size_t *out_pos, size_t out_size) {
	lzma_options_lzma opt;
	if (lzma_lzma_preset(&opt, preset))
		return LZMA_OPTIONS_ERROR;
	lzma_filter filters[2] = {
		{ .id = LZMA_FILTER_LZMA2, .options = &opt },
		{ .id = LZMA_VLI_UNKNOWN, .options = NULL },
	};
	lzma_ret ret = lzma_raw_encoder(strm, filters);
	if (ret != LZMA_OK)
		return ret;
	strm->next_in = in;
	strm->avail_in = in_size;
	strm->next_out = out;
	strm->avail_out = out_size;
	do {
		ret = lzma_code(strm, LZMA_FINISH);
	} while (ret == LZMA_OK && strm->avail_out > 0);
	*out_pos = out_size - strm->avail_out;
	strm->next_in = NULL;
	strm->avail_in = 0;
	strm->next_out = NULL;
	strm->avail_out = 0;
	if (ret == LZMA_STREAM_END)
		return LZMA_OK;
	if (ret == LZMA_OK)
		return LZMA_BUF_ERROR; // output full before the end
	return ret;
}
*/
import "C"

import (
	"fmt"
	"runtime"
	"unsafe"

	"github.com/blockimage/blockimage/mtcp"
)

func init() { mtcp.RegisterCodec(Name, NewEncoder) }

// Available reports whether the codec can run (true: built with cgo).
func Available() bool { return true }

// encoder keeps one lzma_stream for the life of the child.
type encoder struct {
	level int
	strm  *C.lzma_stream
}

// NewEncoder returns liblzma's raw LZMA2 encoder for an xz level 0..9.
func NewEncoder(level int) (mtcp.Encoder, error) {
	if _, err := mtcp.PresetFor(level); err != nil {
		return nil, err
	}
	strm := C.mtcp_stream()
	if strm == nil {
		return nil, fmt.Errorf("mtcp/liblzma: out of memory")
	}
	// The stream lives as long as the child (one encoder per child); a
	// finalizer returns it for encoders made and dropped elsewhere.
	e := &encoder{level: level, strm: strm}
	runtime.SetFinalizer(e, func(e *encoder) {
		C.lzma_end(e.strm)
		C.free(unsafe.Pointer(e.strm))
	})
	return e, nil
}

// EncodeLZMA2 appends the raw LZMA2 data of src to dst.
func (e *encoder) EncodeLZMA2(dst, src []byte) ([]byte, error) {
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
	ret := C.mtcp_encode(e.strm, C.uint32_t(e.level), in, C.size_t(len(src)),
		(*C.uint8_t)(unsafe.Pointer(&out[0])), &pos, C.size_t(len(out)))
	runtime.KeepAlive(e) // the finalizer must not free strm during the call
	if ret != C.LZMA_OK {
		return dst, fmt.Errorf("mtcp/liblzma: lzma_raw_buffer_encode: error %d", int(ret))
	}
	return dst[:start+int(pos)], nil
}
