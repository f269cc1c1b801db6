// Command virt-backup backs up libvirt guests, running or not, and
// restores them.
//
//	virt-backup backup --destination-path PATH [--hypervisor-uri URI] [--domain-names NAMES] [--compression none|lzma]
//	virt-backup restore --source-path SRC --destination-path PATH [--hypervisor-uri URI] [--allow-autorun] [--domain-names NAMES]
//	virt-backup verify --source-path SRC
//
// NAMES is a comma-separated list of domain names; without it every domain
// of the hypervisor is backed up (or every domain of the backup restored).
//
// Backup writes, per domain, <name>.xml (the persistent libvirt XML),
// <name>.sav when the domain was running (its memory, virDomainSave), and
// one file per disk, <name>.<target>.<format>[.xz], then backup.xml, the
// metadata (per disk: domain, type, original path and size, compression,
// owner, mode, SELinux context, SHA-256 of the content and of the stored
// file; per domain: name, UUID, whether it was running). A running guest
// is stopped by the save, its disks are copied while it is stopped (so
// they match the saved memory), and it is restored from the saved memory
// at once, unless --leave-stopped; the summary reports this downtime.
// While the guest is stopped only a plain sparse copy is made; checksums,
// compression and fsync run on that copy after the guest resumes (so a
// compressed backup briefly needs the space of the uncompressed data).
// Disks are copied sparsely and compressed with LZMA (.xz files that stock
// `xz -d` reads) by mtcp's child processes when --compression lzma.
// qcow2 disks with a backing chain are flattened into one image
// (qemu-img convert); network and pool-volume disks are refused before the
// guest is stopped.
//
// Restore reads backup.xml (untrusted: no name may leave the destination),
// verifies every checksum, recreates each disk in the destination with its
// original size (holes kept), owner, mode and SELinux context, and defines
// the domain with the new disk paths. Block-device disks are restored as
// raw image files. A domain whose name or UUID is still defined on the
// hypervisor is refused, never replaced: undefine it first, or restore on
// another host. With --allow-autorun a domain that was running at backup
// time is started from its saved memory (the copy of <name>.sav in the
// destination, whose embedded XML now names the new disks); without it,
// `virsh restore DEST/<name>.sav` does so later. Nothing existing in the
// destination is overwritten.
//
// Verify checks a backup without libvirt: metadata, every stored file's
// checksum, and every disk's decompressed content against its checksum.
//
// SIGINT, SIGTERM and SIGHUP stop a run cleanly: a guest stopped for its
// backup is resumed from its saved memory first, and partial files are
// removed.
//
// Output: progress on stderr when it is a terminal; a summary on stdout,
// as JSON with --json. Exit codes: 0 every domain succeeded; 1 at least one
// domain failed (the others were still processed; see the summary);
// 2 usage error; 3 nothing could be done (hypervisor unreachable, missing
// or corrupt metadata, unusable destination).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/blockimage/blockimage/mtcp"
)

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
	exitFatal  = 3
)

const usage = `Usage:
  virt-backup backup --destination-path PATH [--hypervisor-uri URI] [--domain-names NAMES] [--compression none|lzma]
  virt-backup restore --source-path SRC --destination-path PATH [--hypervisor-uri URI] [--allow-autorun] [--domain-names NAMES]
  virt-backup verify --source-path SRC

Back up libvirt guests (running guests are saved, copied and resumed),
restore them, or verify a backup. Run 'virt-backup COMMAND --help' for the
options of a command.

Exit codes: 0 all domains succeeded, 1 some domain failed, 2 usage error,
3 nothing could be done (hypervisor unreachable, bad metadata or destination).
`

func main() {
	mtcp.Main()
	// SIGHUP too: a closed terminal or a dropped ssh session must not kill
	// the program while a guest is stopped for its backup (it would stay
	// shut off, its memory only in the .sav); cancelling resumes it.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "backup":
		return runBackup(ctx, args[1:], stdout, stderr)
	case "restore":
		return runRestore(ctx, args[1:], stdout, stderr)
	case "verify":
		return runVerify(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "virt-backup: unknown command %q\n\n%s", args[0], usage)
	return exitUsage
}
