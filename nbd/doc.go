// Package nbd is a userspace Network Block Device client, a backup sink
// built on it, and an embedded NBD server backed by a sparse file.
//
// It speaks the fixed newstyle protocol of
// https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md:
// NBD_OPT_GO with block size constraints, structured replies, meta contexts
// (base:allocation, qemu:dirty-bitmap:NAME) for BlockStatus, TLS via
// NBD_OPT_STARTTLS, and several connections when the export advertises
// CAN_MULTI_CONN. Wire constants come from go-nbd's protocol package where
// it has them; its client (which needs the kernel's nbd driver) and server
// are not used.
//
// [Client] is the protocol: requests from any number of goroutines are
// pipelined, matched to replies by cookie in whatever order the server sends
// them, and every reply is validated before it is trusted: a hostile server
// gets an error wrapping [ErrProtocol], never a panic or an allocation sized
// by its numbers.
//
// [Sink] is what a backup writes to: WriteAt sends data pipelined (keeping a
// copy until a FLUSH covers it, or none when SinkOptions.Source can give it
// back), all-zero blocks and WriteZeroes ranges are skipped, written as
// WRITE_ZEROES or trimmed, and a connection that breaks is re-established
// with backoff and every write no successful FLUSH covered is sent again.
// Durable reports exactly which extents a FLUSH covered; nothing else is
// ever reported durable. [Info] probes an export with NBD_OPT_INFO.
//
// [Server] serves a [Backend] (a sparse file via [NewFileBackend]) to any NBD
// client: concurrent requests, FLUSH with fsync, FUA, TRIM that punches
// holes, WRITE_ZEROES, structured replies and base:allocation from the
// file's holes.
package nbd
