// Command linuxagent takes full, diff and incremental image backups of the
// block devices of a running Linux machine to an NBD target, consistent
// while the filesystems stay in use, as the Linux Agent design describes.
//
//	linuxagent backup DEVICE --to TARGET [--mode full|diff|incremental]
//	linuxagent restore --from TARGET DEVICE_OR_FILE
//	linuxagent daemon [--track DEVICE]...
//	linuxagent status | cancel | devices | track | untrack
//	linuxagent inspect DEVICE_OR_IMAGE
//
// TARGET is nbd://host:port/export, nbd+unix:///export?socket=PATH, or a
// local image file, which the agent serves to itself through its embedded
// NBD server. Full and diff backups run without a daemon; incremental
// backups ask the daemon, which traces the device between backups.
// Run "linuxagent help COMMAND" for each command's flags.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// command is one subcommand.
type command struct {
	name, usage, summary string
	run                  func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

var commands []command

func init() {
	commands = []command{
		{"backup", "backup DEVICE --to TARGET [--mode full|diff|incremental] [--rate-limit BYTES/s] [--json]", "back up a device or image file", cmdBackup},
		{"restore", "restore --from TARGET DEVICE_OR_FILE [--force] [--quiet]", "write a backup image back to a device or file", cmdRestore},
		{"daemon", "daemon [--state-dir DIR] [--socket PATH] [--listen HOST:PORT] [--track DEVICE]...", "trace devices and serve the HTTP API", cmdDaemon},
		{"status", "status [JOB_ID] [--json]", "show the daemon's backups and their progress", cmdStatus},
		{"cancel", "cancel JOB_ID|DEVICE", "cancel a running backup", cmdCancel},
		{"devices", "devices [--json]", "list block devices, their mounts and tracking state", cmdDevices},
		{"track", "track DEVICE", "ask the daemon to trace a device", cmdTrack},
		{"untrack", "untrack DEVICE", "ask the daemon to stop tracing a device", cmdUntrack},
		{"inspect", "inspect [FLAGS] DEVICE_OR_IMAGE", "show a filesystem's type and in-use blocks", cmdInspect},
	}
}

func main() {
	platformMain()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run dispatches to a subcommand and returns the exit status: 0 on
// success, 1 when the work failed, 2 on a usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	name := args[0]
	if name == "help" || name == "-h" || name == "--help" || name == "-help" {
		if len(args) > 1 && name == "help" {
			if c, ok := lookup(args[1]); ok {
				return c.run(ctx, []string{"--help"}, stdout, stderr)
			}
		}
		usage(stdout)
		return 0
	}
	c, ok := lookup(name)
	if !ok {
		fmt.Fprintf(stderr, "linuxagent: unknown command %q\n\n", name)
		usage(stderr)
		return 2
	}
	return c.run(ctx, args[1:], stdout, stderr)
}

func lookup(name string) (command, bool) {
	for _, c := range commands {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

func usage(w io.Writer) {
	fmt.Fprint(w, `linuxagent: image backups of live Linux block devices over NBD

Usage: linuxagent COMMAND [ARGS]

Commands:
`)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
TARGET is nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, or a
local image file (created sparse, and served through the embedded NBD
server). Full and diff backups need no daemon; an incremental asks the
daemon, which must have been tracking the device since the last backup.

Run 'linuxagent help COMMAND' or 'linuxagent COMMAND --help' for details.
`)
}

// exitErr prints err and returns the failure status.
func exitErr(stderr io.Writer, err error) int {
	if errors.Is(err, context.Canceled) {
		fmt.Fprintln(stderr, "linuxagent: interrupted")
		return 1
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "linuxagent:") {
		msg = "linuxagent: " + msg
	}
	fmt.Fprintln(stderr, msg)
	return 1
}
