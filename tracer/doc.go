// Package tracer records which blocks of a block device change, so that an
// incremental backup copies only those, and says loudly when it may have
// missed any.
//
// See tracer.go for the tracing sources and the flush barrier, set.go for
// the changed-block Set and its epochs.
package tracer
