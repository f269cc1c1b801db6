//go:build cgo

package main

import "github.com/blockimage/blockimage/mtcp/liblzma"

// lzmaCodecName is the mtcp child codec: liblzma, since this program needs
// cgo for libvirt anyway and liblzma is several times faster than the
// pure-Go codec.
const lzmaCodecName = liblzma.Name
