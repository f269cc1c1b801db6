// Package agent is what linuxagent does with a device: full, diff and
// incremental backups to a target, and restores. It wires the library's
// packages (blockdev to open and freeze, tracer to record writes, fsparse
// to map the in-use blocks, nbd to reach the target) around the converging
// copy loop of package engine.
//
// The order of operations is the Linux Agent design's: start the tracer
// before reading the filesystem's metadata, so that nothing written between
// the map and the copy is lost; copy while the filesystem stays live;
// re-copy what changed until little is left; then freeze, flush the device
// buffers and the tracer, copy the rest, and thaw.
//
// The operating system is reached through a [Platform], so that the
// decisions (which mode really runs, what to copy, when to freeze) are
// tested apart from the devices, and so that each library package is wired
// in its own file.
package agent
