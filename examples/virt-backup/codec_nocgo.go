//go:build !cgo

package main

// lzmaCodecName is mtcp's pure-Go codec in a build without cgo (which has
// no libvirt either; only verify works there).
const lzmaCodecName = ""
