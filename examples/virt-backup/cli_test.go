package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestUsage runs the command line in-process: every command documents
// its flags on --help, and misuse exits 2 without touching a hypervisor.
func TestUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		out  string // in stdout
		err  string // in stderr
	}{
		{nil, exitUsage, "", "Usage:"},
		{[]string{"--help"}, exitOK, "virt-backup backup --destination-path PATH", ""},
		{[]string{"frobnicate"}, exitUsage, "", `unknown command "frobnicate"`},
		{[]string{"backup", "--help"}, exitOK, "--compression", ""},
		{[]string{"restore", "--help"}, exitOK, "--allow-autorun", ""},
		{[]string{"verify", "--help"}, exitOK, "--source-path", ""},
		{[]string{"backup"}, exitUsage, "", "--destination-path is required"},
		{[]string{"backup", "--destination-path", "/nonexistent/x", "--compression", "zstd"}, exitUsage, "", "unknown compression"},
		{[]string{"backup", "--destination-path", "/nonexistent/x", "--domain-names", "a,,b"}, exitUsage, "", "empty name"},
		{[]string{"backup", "--destination-path", "/nonexistent/x", "--domain-names", "a,a"}, exitUsage, "", "twice"},
		{[]string{"backup", "--destination-path", "/x", "extra"}, exitUsage, "", "unexpected argument"},
		{[]string{"restore", "--source-path", "/x"}, exitUsage, "", "required"},
		{[]string{"restore", "--bogus"}, exitUsage, "", "not defined"},
		{[]string{"verify"}, exitUsage, "", "--source-path is required"},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), c.args, &out, &errb)
		if code != c.code || !strings.Contains(out.String(), c.out) || !strings.Contains(errb.String(), c.err) {
			t.Errorf("virt-backup %s: exit %d (want %d)\nstdout: %s\nstderr: %s", strings.Join(c.args, " "), code, c.code, out.String(), errb.String())
		}
	}
}

func TestVerifyMissingBackup(t *testing.T) {
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"verify", "--source-path", t.TempDir(), "--json"}, &out, &errb)
	if code != exitFatal || !strings.Contains(out.String(), `"ok": false`) || !strings.Contains(out.String(), "no backup metadata") ||
		!strings.Contains(out.String(), `"domains": []`) {
		t.Fatalf("exit %d\n%s%s", code, out.String(), errb.String())
	}
}
