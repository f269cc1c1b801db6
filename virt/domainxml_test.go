package virt

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func readTestdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParseDomain(t *testing.T) {
	d, err := ParseDomain(strings.NewReader(readTestdata(t, "domain-mixed.xml")))
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "mixed" || d.UUID != "6a0a2b8e-1d6c-4e7e-9a55-2f1f6d0c1e11" {
		t.Fatalf("name/uuid = %q/%q", d.Name, d.UUID)
	}
	want := []Disk{
		{Type: "file", Device: "disk", Format: "qcow2", Source: "/var/lib/libvirt/images/a b&c.qcow2", Target: "vda", HasBackingStore: true},
		{Type: "block", Device: "disk", Format: "raw", Source: "/dev/loop7", Target: "vdb", Shareable: true},
		{Type: "file", Device: "cdrom", Format: "raw", Target: "hdc", ReadOnly: true},
		{Type: "network", Device: "disk", Format: "raw", Target: "vdc"},
	}
	if len(d.Disks) != len(want) {
		t.Fatalf("got %d disks, want %d: %+v", len(d.Disks), len(want), d.Disks)
	}
	for i := range want {
		if d.Disks[i] != want[i] {
			t.Errorf("disk %d = %+v, want %+v", i, d.Disks[i], want[i])
		}
	}
	copyable := []bool{true, true, false, false}
	for i, c := range copyable {
		if d.Disks[i].Copyable() != c {
			t.Errorf("disk %d copyable = %v", i, !c)
		}
	}
	if err := d.Disks[3].CheckSupported(); !errors.Is(err, ErrUnsupportedDisk) {
		t.Errorf("network disk: %v, want ErrUnsupportedDisk", err)
	}
	for i := 0; i < 3; i++ {
		if err := d.Disks[i].CheckSupported(); err != nil {
			t.Errorf("disk %d: %v", i, err)
		}
	}
	vmdk := Disk{Type: "file", Source: "/x.vmdk", Format: "vmdk", Target: "sda"}
	if err := vmdk.CheckSupported(); !errors.Is(err, ErrUnsupportedDisk) {
		t.Errorf("vmdk: %v", err)
	}
}

func TestParseDomainBad(t *testing.T) {
	for name, in := range map[string]string{
		"empty":     "",
		"not xml":   "hello",
		"no name":   "<domain><uuid>x</uuid></domain>",
		"truncated": "<domain><name>x</name><devices><disk type='file'>",
		"other":     "<network><name>x</name></network>",
	} {
		if _, err := ParseDomain(strings.NewReader(in)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	huge := "<domain><name>x</name>" + strings.Repeat(" ", maxXMLSize) + "</domain>"
	if _, err := ParseDomain(strings.NewReader(huge)); err == nil {
		t.Error("oversized XML accepted")
	}
}

func TestRewriteDiskSources(t *testing.T) {
	in := readTestdata(t, "domain-mixed.xml")
	out, err := RewriteDiskSources(in, map[string]string{
		"/var/lib/libvirt/images/a b&c.qcow2": "/restore/mixed.vda.qcow2",
		"/dev/loop7":                          "/restore/it's \"vdb\".raw",
	}, map[string]bool{"/var/lib/libvirt/images/a b&c.qcow2": true})
	if err != nil {
		t.Fatal(err)
	}
	d, err := ParseDomain(strings.NewReader(out))
	if err != nil {
		t.Fatalf("rewritten XML does not parse: %v\n%s", err, out)
	}
	if d.Disks[0].Source != "/restore/mixed.vda.qcow2" || d.Disks[0].HasBackingStore {
		t.Errorf("vda = %+v", d.Disks[0])
	}
	if d.Disks[1].Type != "file" || d.Disks[1].Source != `/restore/it's "vdb".raw` {
		t.Errorf("vdb = %+v", d.Disks[1])
	}
	// Everything else is byte-for-byte the same.
	for _, keep := range []string{
		`<app:info xmlns:app="urn:example:app" level="3">keep &amp; me</app:info>`,
		`<seclabel model='dac' relabel='no'/>`,
		`<qemu:unknown-thing attr='1'/>`,
		`<qemu:commandline><qemu:arg value='-nodefaults'/></qemu:commandline>`,
		`<source protocol='nbd' name='export'><host name='localhost' port='10809'/></source>`,
		`<shareable/>`,
		`index="2"`,
	} {
		if !strings.Contains(out, keep) {
			t.Errorf("rewrite lost %s\n%s", keep, out)
		}
	}
	if strings.Contains(out, "base.raw") {
		t.Errorf("flattened disk kept its backingStore:\n%s", out)
	}
	if strings.Contains(out, `dev="/dev/loop7"`) || strings.Contains(out, `type="block"`) {
		t.Errorf("block disk not turned into a file disk:\n%s", out)
	}
	// Without flatten the backing store stays.
	out2, err := RewriteDiskSources(in, map[string]string{
		"/var/lib/libvirt/images/a b&c.qcow2": "/r/a", "/dev/loop7": "/r/b",
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out2, "base.raw") {
		t.Errorf("backingStore removed without flatten")
	}
}

func TestRewriteDiskSourcesMissingPath(t *testing.T) {
	_, err := RewriteDiskSources(readTestdata(t, "domain-mixed.xml"), map[string]string{"/dev/loop7": "/r/b"}, nil)
	if err == nil || !strings.Contains(err.Error(), "a b&c.qcow2") {
		t.Fatalf("err = %v, want one naming the unmapped disk", err)
	}
}

func TestRewriteNoDisks(t *testing.T) {
	in := "<domain type='qemu'><name>n</name><devices/></domain>"
	out, err := RewriteDiskSources(in, nil, nil)
	if err != nil || out != in {
		t.Fatalf("out=%q err=%v", out, err)
	}
}

func FuzzRewriteDiskSources(f *testing.F) {
	b, err := os.ReadFile("testdata/domain-mixed.xml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(b))
	f.Add("<domain><name>x</name><devices><disk type='block'><source dev='/a'/></disk></devices></domain>")
	f.Fuzz(func(t *testing.T, in string) {
		d, err := ParseDomain(strings.NewReader(in))
		if err != nil {
			return
		}
		paths := map[string]string{}
		for _, k := range d.Disks {
			if k.Source != "" {
				paths[k.Source] = "/new/" + k.Target
			}
		}
		out, err := RewriteDiskSources(in, paths, nil)
		if err != nil {
			return
		}
		d2, err := ParseDomain(strings.NewReader(out))
		if err != nil {
			t.Fatalf("rewrite made unparsable XML: %v\nin: %q\nout: %q", err, in, out)
		}
		if d2.Name != d.Name {
			t.Fatalf("name changed: %q -> %q", d.Name, d2.Name)
		}
	})
}
