// Package blockimage is the overview of a Go library for image-based
// backups of Linux block devices and libvirt guests: consistent while they
// run, and transferred efficiently. The work is done by its packages, which
// a backup agent composes:
//
//   - [github.com/blockimage/blockimage/blockdev] opens a block device or
//     image file (size, sector sizes, io.ReaderAt) and runs the
//     consistency sequence: freeze the filesystem (FIFREEZE), flush the
//     device buffers (BLKFLSBUF), flush the change tracer, run the caller's
//     critical section, thaw (FITHAW), with a watchdog that thaws even if
//     the agent is killed.
//   - [github.com/blockimage/blockimage/tracer] records which sectors of a
//     device are written (blktrace, or ftrace's blk tracer), into a
//     changed-block set that says loudly when events were lost. Its flush
//     is the sequencer's third flush.
//   - [github.com/blockimage/blockimage/fsparse] reads a filesystem's
//     metadata (ext2/3/4, XFS, ReiserFS) from any io.ReaderAt and yields
//     the extents in use, so a full backup reads only those.
//   - [github.com/blockimage/blockimage/nbd] is a userspace Network Block
//     Device client that writes images to any NBD server and survives poor
//     networks, and an embedded server backed by a sparse file.
//   - [github.com/blockimage/blockimage/mtcp] is the Multi-Threaded
//     Compression Protocol: child processes (the binary re-executed, see
//     mtcp.Main) compress fixed-size chunks with LZMA2, and the control
//     process writes them in order as one .xz Stream of independent
//     Blocks, with Index and Footer, that stock xz reads; its Reader
//     decompresses any .xz, in parallel when it can seek. The liblzma
//     codec (mtcp/liblzma) needs cgo.
//   - [github.com/blockimage/blockimage/virt] drives libvirt: domains,
//     their XML and disks, save and restore of running guests, and backup
//     metadata. It needs cgo (libvirt).
//
// A backup of a live Linux machine, as examples/linuxagent does it: start
// the tracer on the device, map the in-use extents with fsparse, copy them
// to the NBD target while the filesystem stays live, re-copy what the tracer
// saw change until little is left, then run the blockdev sequence (freeze,
// flush buffers, flush the tracer) and copy the rest inside its critical
// section before the thaw. An incremental backup copies only what the tracer
// recorded since the last one. examples/virt-backup saves a guest's memory,
// copies its disks (optionally through mtcp) and restores the guest.
//
// The packages are layered: blockdev, tracer, fsparse, nbd and mtcp import
// none of each other, so each can be used alone; the sequencer takes the
// tracer's flush as a function. Everything builds with CGO_ENABLED=0;
// without cgo, virt and mtcp/liblzma report themselves unavailable at run
// time. Linux-only code lives in _linux.go files.
package blockimage
