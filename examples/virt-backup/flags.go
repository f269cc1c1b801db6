package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// newFlagSet returns a flag set that prints its usage (with the command
// line synopsis) on --help to stdout and reports errors on stderr.
func newFlagSet(name, synopsis, about string, stdout, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	helps[fs] = func(w io.Writer) {
		fmt.Fprintf(w, "Usage: %s\n\n%s\nOptions:\n", synopsis, about)
		fs.VisitAll(func(f *flag.Flag) {
			arg, usage := flag.UnquoteUsage(f)
			fmt.Fprintf(w, "  --%s", f.Name)
			if arg != "" {
				fmt.Fprintf(w, " %s", strings.ToUpper(arg))
			}
			fmt.Fprintf(w, "\n      %s", usage)
			if f.DefValue != "" && f.DefValue != "false" {
				fmt.Fprintf(w, " (default %s)", f.DefValue)
			}
			fmt.Fprintln(w)
		})
		fmt.Fprint(w, "\nExit codes: 0 all domains succeeded, 1 some domain failed, 2 usage error,\n3 nothing could be done (hypervisor unreachable, bad metadata or destination).\n")
	}
	// flag prints usage itself on errors; we print it once, ourselves.
	fs.Usage = func() {}
	return fs
}

// helps holds each flag set's full help text printer.
var helps = map[*flag.FlagSet]func(io.Writer){}

// parse parses args; it returns (done, code): done is true when the caller
// must return code at once (--help, or a usage error).
func parse(fs *flag.FlagSet, args []string, stdout io.Writer) (bool, int) {
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		helps[fs](stdout)
		return true, exitOK
	}
	if err != nil {
		fmt.Fprintf(fs.Output(), "Run 'virt-backup %s --help' for usage.\n", fs.Name())
		return true, exitUsage
	}
	if fs.NArg() > 0 {
		return true, usageError(fs, "unexpected argument %q", fs.Arg(0))
	}
	return false, 0
}

func usageError(fs *flag.FlagSet, format string, args ...any) int {
	fmt.Fprintf(fs.Output(), "virt-backup %s: %s\nRun 'virt-backup %s --help' for usage.\n", fs.Name(), fmt.Sprintf(format, args...), fs.Name())
	return exitUsage
}

// splitNames splits a comma-separated NAMES list; empty entries and
// duplicates are usage errors.
func splitNames(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	seen := map[string]bool{}
	var out []string
	for _, n := range strings.Split(s, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			return nil, fmt.Errorf("--domain-names %q has an empty name", s)
		}
		if seen[n] {
			return nil, fmt.Errorf("--domain-names names %q twice", n)
		}
		seen[n] = true
		out = append(out, n)
	}
	return out, nil
}
