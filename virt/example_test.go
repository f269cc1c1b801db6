package virt_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"

	"github.com/blockimage/blockimage/virt"
)

// List the domains of a hypervisor and the disks a backup would copy.
// libvirt's test driver stands in for qemu:///system here.
func Example() {
	ctx := context.Background()
	conn, err := virt.Connect(ctx, "test:///default")
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	domains, err := conn.Domains(ctx, "test")
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range domains {
		state, _ := d.State(ctx)
		x, _ := d.XML(ctx, true)
		dx, _ := virt.ParseDomain(strings.NewReader(x))
		fmt.Printf("%s is %s, active: %v\n", d.Name(), state, state.Active())
		for _, k := range dx.Disks {
			fmt.Printf("  %s: %s disk %s, copyable: %v\n", k.Target, k.Type, k.Source, k.Copyable())
		}
		d.Free()
	}
	_, err = conn.Domains(ctx, "no-such-guest")
	fmt.Println(virt.IsNotFound(err), err)
	// Output:
	// test is running, active: true
	//   vda: file disk /guest/diskimage1, copyable: true
	// true virt: domain not found: no-such-guest
}

// Point a domain's disks at restored copies without losing any other
// element of its XML.
func ExampleRewriteDiskSources() {
	in := `<domain type='qemu'><name>web</name><devices>
  <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg/web'/><target dev='vda'/></disk>
  <vendor:thing xmlns:vendor='urn:x'/>
</devices></domain>`
	out, err := virt.RewriteDiskSources(in, map[string]string{"/dev/vg/web": "/restore/web.vda.raw"}, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(out)
	// Output:
	// <domain type='qemu'><name>web</name><devices>
	//   <disk type="file" device="disk"><driver name='qemu' type='raw'/><source file="/restore/web.vda.raw"/><target dev='vda'/></disk>
	//   <vendor:thing xmlns:vendor='urn:x'/>
	// </devices></domain>
}

// Copy a disk image sparsely and record its checksum, as a backup does.
func ExampleCopier_CopySparse() {
	dir, _ := os.MkdirTemp("", "virt-example")
	defer os.RemoveAll(dir)
	src, _ := os.Create(filepath.Join(dir, "disk.raw"))
	src.Truncate(64 << 20)             // 64 MiB, all hole
	src.WriteAt([]byte("boot"), 1<<20) // a little data
	dst, _ := os.Create(filepath.Join(dir, "copy.raw"))
	d, err := virt.Copier{}.CopySparse(context.Background(), dst, src, 64<<20)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("size %d, data written %d bytes\n", d.Size, d.DataBytes)

	var meta bytes.Buffer
	m := virt.Metadata{Domains: []virt.DomainMetadata{{Name: "web", XML: virt.StoredFile{File: "web.xml", SHA256: d.SHA256},
		Disks: []virt.DiskMetadata{{Domain: "web", Type: "file", Target: "vda", Format: "raw", Source: src.Name(),
			Size: d.Size, Compression: virt.CompressionNone, Mode: 0o600, SHA256: d.SHA256,
			Stored: virt.StoredFile{File: "web.vda.raw", Size: d.Size, SHA256: d.SHA256}}}}}}
	m.WriteTo(&meta)
	back, err := virt.ReadMetadata(&meta)
	fmt.Println(back.Domains[0].Disks[0].Stored.File, err)
	// Output:
	// size 67108864, data written 4096 bytes
	// web.vda.raw <nil>
}
