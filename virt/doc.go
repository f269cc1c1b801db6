// Package virt backs up libvirt guests: it connects to a hypervisor, lists
// domains, reads a domain's XML and its disks, saves a running domain's
// memory (virDomainSave) and brings it back (virDomainRestore), defines a
// domain from XML whose disk paths were rewritten, and reads and writes the
// backup metadata that describes what a backup holds.
//
// Only the hypervisor connection (Connect and the Conn and Domain methods)
// needs cgo and libvirt (libvirt.org/go/libvirt). Without cgo, Connect
// returns ErrUnavailable; everything else (domain XML parsing and
// rewriting, the metadata, the sparse checksummed copy, name checks) is pure
// Go and works everywhere, so tools that only verify a backup need no
// libvirt.
//
// Disks. ParseDomain reads <disk> elements of type "file" and "block";
// "network" and "volume" disks and disks without a source are reported so
// that a caller can refuse them before it stops a guest. The image format
// comes from <driver type=...> ("raw", "qcow2"). A backing chain (a qcow2
// with a backing file) is detected with `qemu-img info --backing-chain`
// (ImageChain), because the persistent XML does not always carry a
// <backingStore>; examples/virt-backup flattens such a disk into one
// self-contained image with `qemu-img convert` (Flatten) so that a restore
// never depends on files outside the backup.
//
// Restore. RewriteDiskSources changes only the <source file|dev> attributes
// (and a block disk's type, since block disks are restored as image files)
// by a token-level rewrite of the original text: every element libvirt or a
// newer schema put in the XML, known to this package or not, survives byte
// for byte.
//
// Untrusted input. Metadata, file names and domain names read from a backup
// are untrusted: ReadMetadata bounds its input and validates every name
// with CheckName (no separators, no "..", no absolute paths, no control
// characters), so a hostile backup cannot make a restore write outside its
// destination.
//
// Sparse copies. CopySparse, WriteLogical and ReadLogical move a disk's
// logical content while keeping holes: data extents are found with
// SEEK_DATA/SEEK_HOLE, all-zero blocks are not written, and the
// destination is truncated to the original size, so a restored image is as
// sparse as (or sparser than) the original. Each returns the SHA-256 of the
// logical content, which is what the metadata records and a restore
// verifies.
package virt
