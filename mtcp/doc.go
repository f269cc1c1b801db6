// Package mtcp is the Multi-Threaded Compression Protocol of the
// virt-backup design: a control process splits its input into fixed-size
// chunks (chunk N covers bytes N*ChunkSize to (N+1)*ChunkSize-1), hands
// each chunk to an idle child process that compresses it with LZMA2, and
// writes the compressed chunks out strictly in chunk order. The output is
// one .xz Stream (https://tukaani.org/xz/xz-file-format.txt) of
// independent Blocks, the layout `xz -T` and pixz write: each Block Header
// records its Compressed Size and Uncompressed Size, every Block carries a
// CRC64 of its data, and the control process writes the Stream Header, the
// Index and the Stream Footer. Stock xz -d, -t and -l read it, and
// [NewReader] decompresses it (or any other .xz file) in parallel from an
// io.ReaderAt, using the Index.
//
// # Child processes
//
// Go cannot fork, so the children are this same binary started again
// (internal/reexec): a program that uses [NewWriter] must call [Main]
// first thing in main (and in TestMain). The codec a child runs is passed
// as its argument: "go" (github.com/ulikunitz/xz, built in) or any codec
// registered with [RegisterCodec], such as "liblzma" from the package
// github.com/blockimage/blockimage/mtcp/liblzma, which registers itself
// when imported. The pool does not care which codec a child runs.
//
// # Wire protocol
//
// The control process writes to a child's standard input and reads its
// standard output. Every message starts with the child's process ID as a
// 4-byte big-endian unsigned integer, then one ASCII letter:
//
//	idle   {PID}I                          child -> control
//	data   {PID}C{CHUNKID}S{SIZE}{DATA}    both ways
//	done   {PID}D{CHUNKID}                 child -> control
//	flush  {PID}F{CHUNKID}                 control -> child
//	quit   {PID}Q                          control -> child
//
// CHUNKID is an 8-byte big-endian unsigned integer, SIZE a 4-byte
// big-endian unsigned integer followed by exactly SIZE bytes of DATA; the
// letters C, S, D, F, I and Q are single bytes. A data message from the
// control process carries the uncompressed chunk; the child answers a
// flush with a data message whose DATA is the complete .xz Block of that
// chunk (Block Header, LZMA2 data, Block Padding, CRC64). Every message is
// validated on receipt: the PID must be the child's, the letter one the
// receiver accepts in its current state, CHUNKID the chunk the child holds,
// and SIZE no larger than the bound agreed at start (the chunk size for
// input, [BlockBound] of it for output). Anything else is a
// [ProtocolError]; a child that exits or is killed loses only its chunk,
// which the control process gives to another child.
//
// A child's life: it sends idle; it receives data, compresses, sends done;
// when its chunk is the next one to be written the control process sends
// flush and the child sends the data back and frees it. A child works
// ahead: it sends idle whenever it compresses nothing and holds at most
// one compressed Block, so a child that finished before the chunk due
// next takes another chunk instead of waiting for its flush, and answers
// the flush while it compresses. (liblzma's own threads do the same with
// their output queue; without it, two children reached 1.86 times the
// throughput of one and 0.96 of xz -T2.) A child thus holds at most two
// Blocks, and the control process asks for them strictly in chunk order.
// When the input has ended, idle children that hold nothing receive quit
// and exit.
package mtcp
