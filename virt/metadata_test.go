package virt

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

const sum = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func sampleMetadata() *Metadata {
	return &Metadata{
		Created:    time.Date(2026, 11, 29, 20, 0, 0, 0, time.UTC),
		Hypervisor: "qemu:///system",
		Domains: []DomainMetadata{{
			Name: "web", UUID: "6a0a2b8e-1d6c-4e7e-9a55-2f1f6d0c1e11", Running: true, State: "running",
			XML:    StoredFile{File: "web.xml", Size: 100, SHA256: sum},
			Memory: &StoredFile{File: "web.sav", Size: 1 << 20, SHA256: sum},
			Disks: []DiskMetadata{{
				Domain: "web", Type: "file", Device: "disk", Target: "vda", Format: "qcow2",
				Source: "/var/lib/libvirt/images/web.qcow2", Size: 16 << 20, Compression: CompressionLZMA,
				UID: 64055, GID: 64055, Mode: 0o600 | os.ModeSetgid, SELinux: "system_u:object_r:svirt_image_t:s0:c1,c2",
				SHA256: sum, Flattened: true, BackingChain: []string{"/base.qcow2"},
				Stored: StoredFile{File: "web.vda.qcow2.xz", Size: 4096, SHA256: sum},
			}},
		}, {
			Name: "db", UUID: "7a0a2b8e-1d6c-4e7e-9a55-2f1f6d0c1e11", State: "shutoff",
			XML: StoredFile{File: "db.xml", Size: 100, SHA256: sum},
		}},
	}
}

func TestMetadataRoundTrip(t *testing.T) {
	m := sampleMetadata()
	var buf bytes.Buffer
	if _, err := m.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "<mode>2600</mode>") {
		t.Errorf("mode not octal:\n%s", buf.String())
	}
	got, err := ReadMetadata(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != MetadataVersion || !got.Created.Equal(m.Created) || got.Hypervisor != m.Hypervisor {
		t.Fatalf("header = %+v", got)
	}
	if len(got.Domains) != 2 || got.Domain("db") == nil || got.Domain("nope") != nil {
		t.Fatalf("domains = %+v", got.Domains)
	}
	w := got.Domain("web")
	if !w.Running || w.Memory == nil || *w.Memory != *m.Domains[0].Memory {
		t.Fatalf("web = %+v", w)
	}
	want := m.Domains[0].Disks[0]
	want.ModeOctal = "2600"
	if g := w.Disks[0]; g.Source != want.Source || g.Mode != want.Mode || g.SELinux != want.SELinux ||
		g.UID != want.UID || g.Stored != want.Stored || !g.Flattened || len(g.BackingChain) != 1 || g.Size != want.Size {
		t.Fatalf("disk = %+v\nwant %+v", g, want)
	}
}

func TestReadMetadataRejects(t *testing.T) {
	cases := map[string]func(m *Metadata){
		"hostile domain name": func(m *Metadata) { m.Domains[0].Name = "../../etc"; m.Domains[0].Disks[0].Domain = "../../etc" },
		"absolute file":       func(m *Metadata) { m.Domains[0].XML.File = "/etc/passwd" },
		"hostile stored file": func(m *Metadata) { m.Domains[0].Disks[0].Stored.File = "../x" },
		"hostile target":      func(m *Metadata) { m.Domains[0].Disks[0].Target = "a/b" },
		"file used twice":     func(m *Metadata) { m.Domains[1].XML.File = "web.xml" },
		"metadata overwritten": func(m *Metadata) {
			m.Domains[1].XML.File = MetadataFile
		},
		"negative size":     func(m *Metadata) { m.Domains[0].Disks[0].Size = -1 },
		"bad checksum":      func(m *Metadata) { m.Domains[0].Disks[0].SHA256 = "zz" },
		"bad compression":   func(m *Metadata) { m.Domains[0].Disks[0].Compression = "zstd" },
		"bad format":        func(m *Metadata) { m.Domains[0].Disks[0].Format = "vmdk" },
		"running no memory": func(m *Metadata) { m.Domains[0].Memory = nil },
		"wrong domain":      func(m *Metadata) { m.Domains[0].Disks[0].Domain = "db" },
		"duplicate domain":  func(m *Metadata) { m.Domains[1].Name = "web" },
		"no source":         func(m *Metadata) { m.Domains[0].Disks[0].Source = "" },
	}
	for name, mutate := range cases {
		m := sampleMetadata()
		mutate(m)
		var buf bytes.Buffer
		if _, err := m.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		_, err := ReadMetadata(&buf)
		if !errors.Is(err, ErrCorruptMetadata) && !errors.Is(err, ErrUnsafeName) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	for name, doc := range map[string]string{
		"empty":       "",
		"garbage":     "\x00\x01garbage",
		"truncated":   "<virtbackup version='1'><domain name='x'",
		"wrong root":  "<domain version='1'/>",
		"version 2":   "<virtbackup version='2'/>",
		"bad mode":    `<virtbackup version="1"><domain name="d"><xml file="d.xml" size="1" sha256="` + sum + `"/><disk domain="d" type="file" target="vda" format="raw"><source>/x</source><compression>none</compression><sha256>` + sum + `</sha256><owner><mode>999</mode></owner><stored file="d.vda.raw" sha256="` + sum + `"/></disk></domain></virtbackup>`,
		"huge number": `<virtbackup version="99999999999999999999"/>`,
	} {
		if _, err := ReadMetadata(strings.NewReader(doc)); !errors.Is(err, ErrCorruptMetadata) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func FuzzReadMetadata(f *testing.F) {
	var buf bytes.Buffer
	if _, err := sampleMetadata().WriteTo(&buf); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte(`<virtbackup version="1"><domain name=".."/></virtbackup>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ReadMetadata(bytes.NewReader(data))
		if err != nil {
			return
		}
		for _, d := range m.Domains {
			if CheckName(d.Name) != nil || CheckName(d.XML.File) != nil {
				t.Fatalf("unsafe name accepted: %+v", d)
			}
			for _, k := range d.Disks {
				if CheckName(k.Stored.File) != nil || CheckName(k.Target) != nil || k.Size < 0 {
					t.Fatalf("bad disk accepted: %+v", k)
				}
			}
		}
		var out bytes.Buffer
		if _, err := m.WriteTo(&out); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadMetadata(&out); err != nil {
			t.Fatalf("re-read of valid metadata failed: %v\n%s", err, out.String())
		}
	})
}
