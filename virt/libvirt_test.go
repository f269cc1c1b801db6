//go:build cgo

package virt

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// These tests use libvirt's test driver (test:///default), a hypervisor
// simulated inside the client library: one running domain named "test".
// The real-qemu tests live in examples/virt-backup.

func testConn(t *testing.T) *Conn {
	t.Helper()
	c, err := Connect(context.Background(), "test:///default")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestDomainsFilter(t *testing.T) {
	ctx := context.Background()
	c := testConn(t)
	all, err := c.Domains(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) == 0 || all[0].Name() != "test" {
		t.Fatalf("domains = %v", all)
	}
	freeAll(all)
	one, err := c.Domains(ctx, "test")
	if err != nil || len(one) != 1 {
		t.Fatalf("%v %v", one, err)
	}
	freeAll(one)
	_, err = c.Domains(ctx, "nope", "test", "gone")
	var nf *NotFoundError
	if !errors.As(err, &nf) || !IsNotFound(err) || strings.Join(nf.Names, ",") != "nope,gone" {
		t.Fatalf("err = %v, want NotFoundError for nope,gone", err)
	}
}

func TestDomainXMLAndState(t *testing.T) {
	ctx := context.Background()
	c := testConn(t)
	d, err := c.Lookup(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free()
	s, err := d.State(ctx)
	if err != nil || s != StateRunning || !s.Active() {
		t.Fatalf("state %q %v", s, err)
	}
	x, err := d.XML(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	dx, err := ParseDomain(strings.NewReader(x))
	if err != nil || dx.Name != "test" {
		t.Fatalf("%+v %v", dx, err)
	}
	u, err := d.UUID()
	if err != nil || u != dx.UUID {
		t.Fatalf("uuid %q vs XML %q (%v)", u, dx.UUID, err)
	}
}

func TestDefineRefusesExisting(t *testing.T) {
	ctx := context.Background()
	c := testConn(t)
	d, _ := c.Lookup(ctx, "test")
	x, _ := d.XML(ctx, true)
	d.Free()
	if _, err := c.Define(ctx, x); !errors.Is(err, ErrDomainExists) {
		t.Fatalf("redefining the same domain: %v, want ErrDomainExists", err)
	}
	// Same UUID, new name: still refused.
	renamed := strings.Replace(x, "<name>test</name>", "<name>other</name>", 1)
	if _, err := c.Define(ctx, renamed); !errors.Is(err, ErrDomainExists) {
		t.Fatalf("same UUID: %v, want ErrDomainExists", err)
	}
	// New name and UUID: defined.
	fresh := "<domain type='test'><name>fresh</name><memory>8192</memory><os><type>hvm</type></os></domain>"
	nd, err := c.Define(ctx, fresh)
	if err != nil {
		t.Fatal(err)
	}
	defer nd.Free()
	if s, _ := nd.State(ctx); s != StateShutoff || s.Active() {
		t.Fatalf("new domain state %q", s)
	}
	if err := nd.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.Exists(ctx, "fresh", ""); !ok || err != nil {
		t.Fatalf("exists %v %v", ok, err)
	}
	if ok, err := c.Exists(ctx, "absent", "00000000-0000-0000-0000-00000000abcd"); ok || err != nil {
		t.Fatalf("absent exists %v %v", ok, err)
	}
}

func TestSaveRestoreTestDriver(t *testing.T) {
	ctx := context.Background()
	c := testConn(t)
	d, err := c.Lookup(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free()
	sav := filepath.Join(t.TempDir(), "test.sav")
	if err := d.Save(ctx, sav); err != nil {
		t.Fatal(err)
	}
	if s, _ := d.State(ctx); s.Active() {
		t.Fatalf("state after save %q", s)
	}
	x, err := c.SaveImageXML(ctx, sav)
	if err != nil {
		t.Fatal(err)
	}
	if dx, err := ParseDomain(strings.NewReader(x)); err != nil || dx.Name != "test" {
		t.Fatalf("save image XML: %+v %v", dx, err)
	}
	if err := c.Restore(ctx, sav, "", false); err != nil {
		t.Fatal(err)
	}
	if s, _ := d.State(ctx); s != StateRunning {
		t.Fatalf("state after restore %q", s)
	}
	if err := c.Restore(ctx, filepath.Join(t.TempDir(), "missing.sav"), "", false); err == nil {
		t.Fatal("restore from a missing file succeeded")
	}
}

func TestCancelledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Connect(ctx, "test:///default"); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
}
