package virt

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
)

// maxXMLSize bounds a domain XML or metadata document read from a backup.
const maxXMLSize = 16 << 20

// DomainXML is what a backup needs from a domain's libvirt XML.
type DomainXML struct {
	Name  string
	UUID  string
	Disks []Disk
}

// Disk is one <disk> element of a domain.
type Disk struct {
	// Type is the disk's type attribute: "file", "block", "network",
	// "volume", ...
	Type string
	// Device is "disk", "cdrom", "floppy" or "lun".
	Device string
	// Format is <driver type=...>: "raw", "qcow2", ...; empty when the
	// XML does not say.
	Format string
	// Source is the file (type "file") or device (type "block") path;
	// empty for other types and for an empty cdrom drive.
	Source string
	// Target is <target dev=...>, e.g. "vda".
	Target string
	// ReadOnly and Shareable mirror <readonly/> and <shareable/>.
	ReadOnly, Shareable bool
	// HasBackingStore is true when the XML names a backing image (a
	// non-empty <backingStore>). The persistent XML often omits it; use
	// ImageChain for the truth.
	HasBackingStore bool
}

// Copyable reports whether the disk has contents this package can copy:
// a file or block device source.
func (d Disk) Copyable() bool {
	return (d.Type == "file" || d.Type == "block") && d.Source != ""
}

// CheckSupported returns an error wrapping ErrUnsupportedDisk for a disk
// that has a source this package cannot copy (network, pool volume, an
// image format other than raw and qcow2). Disks without a source (an empty
// cdrom) are fine: there is nothing to copy.
func (d Disk) CheckSupported() error {
	switch d.Type {
	case "file", "block":
	default:
		if d.Source == "" && d.Type == "" {
			return nil
		}
		return fmt.Errorf("%w: disk %s has type %q (only file and block disks are copied)", ErrUnsupportedDisk, d.Target, d.Type)
	}
	if d.Source == "" {
		return nil
	}
	switch d.Format {
	case "raw", "qcow2", "":
		return nil
	}
	return fmt.Errorf("%w: disk %s has format %q (only raw and qcow2)", ErrUnsupportedDisk, d.Target, d.Format)
}

type xmlDomain struct {
	XMLName xml.Name  `xml:"domain"`
	Name    string    `xml:"name"`
	UUID    string    `xml:"uuid"`
	Disks   []xmlDisk `xml:"devices>disk"`
}

type xmlDisk struct {
	Type   string `xml:"type,attr"`
	Device string `xml:"device,attr"`
	Driver struct {
		Type string `xml:"type,attr"`
	} `xml:"driver"`
	Source *struct {
		File     string `xml:"file,attr"`
		Dev      string `xml:"dev,attr"`
		Pool     string `xml:"pool,attr"`
		Volume   string `xml:"volume,attr"`
		Protocol string `xml:"protocol,attr"`
		Name     string `xml:"name,attr"`
	} `xml:"source"`
	BackingStore *struct {
		Type string `xml:"type,attr"`
	} `xml:"backingStore"`
	Target struct {
		Dev string `xml:"dev,attr"`
	} `xml:"target"`
	ReadOnly  *struct{} `xml:"readonly"`
	Shareable *struct{} `xml:"shareable"`
}

// ParseDomain reads a domain's libvirt XML (at most 16 MiB).
func ParseDomain(r io.Reader) (*DomainXML, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxXMLSize+1))
	if err != nil {
		return nil, fmt.Errorf("virt: reading domain XML: %w", err)
	}
	if len(data) > maxXMLSize {
		return nil, fmt.Errorf("virt: domain XML is larger than %d bytes", maxXMLSize)
	}
	var x xmlDomain
	if err := xml.Unmarshal(data, &x); err != nil {
		return nil, fmt.Errorf("virt: parsing domain XML: %w", err)
	}
	d := &DomainXML{Name: strings.TrimSpace(x.Name), UUID: strings.TrimSpace(x.UUID)}
	if d.Name == "" {
		return nil, errors.New("virt: domain XML has no <name>")
	}
	for _, xd := range x.Disks {
		disk := Disk{
			Type:      xd.Type,
			Device:    xd.Device,
			Format:    xd.Driver.Type,
			Target:    xd.Target.Dev,
			ReadOnly:  xd.ReadOnly != nil,
			Shareable: xd.Shareable != nil,
		}
		if disk.Device == "" {
			disk.Device = "disk"
		}
		if xd.Source != nil {
			switch xd.Type {
			case "file":
				disk.Source = xd.Source.File
			case "block":
				disk.Source = xd.Source.Dev
			}
		}
		if xd.BackingStore != nil && xd.BackingStore.Type != "" {
			disk.HasBackingStore = true
		}
		d.Disks = append(d.Disks, disk)
	}
	return d, nil
}

// RewriteDiskSources returns xmlText with the source of every file or
// block disk whose current path is a key of newPaths replaced by the
// mapped path. A block disk becomes a file disk (type='file', <source
// file=...>), because restores write disks as image files. When flatten
// contains the old path, the disk's <backingStore> is removed, since the
// new image has no backing file.
//
// Only the <disk> and <source> start tags (and a removed <backingStore>)
// change; every other byte of the input, including elements and attributes
// this package does not know, is kept as it was. A disk source found in the
// XML but missing from newPaths is an error, so that no restored domain
// silently points at the original disks.
func RewriteDiskSources(xmlText string, newPaths map[string]string, flatten map[string]bool) (string, error) {
	dec := xml.NewDecoder(strings.NewReader(xmlText))
	var (
		out      bytes.Buffer
		copied   int64 // bytes of xmlText already copied to out
		stack    []string
		inDisk   bool
		diskType string
		diskTag  struct {
			start, end int64
			el         xml.StartElement
		}
		diskOld  string
		skipFrom int64 = -1
		skipDep  int
	)
	emit := func(upTo int64) { out.WriteString(xmlText[copied:upTo]); copied = upTo }
	for {
		before := dec.InputOffset()
		tok, err := dec.RawToken()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", fmt.Errorf("virt: rewriting domain XML: %w", err)
		}
		after := dec.InputOffset()
		switch t := tok.(type) {
		case xml.StartElement:
			stack = append(stack, t.Name.Local)
			path := strings.Join(stack, "/")
			switch {
			case path == "domain/devices/disk":
				inDisk, diskOld = true, ""
				diskType = attr(t, "type")
				diskTag.start, diskTag.end, diskTag.el = before, after, t.Copy()
			case inDisk && path == "domain/devices/disk/source" && (diskType == "file" || diskType == "block"):
				key := "file"
				if diskType == "block" {
					key = "dev"
				}
				old := attr(t, key)
				if old == "" {
					break
				}
				np, ok := newPaths[old]
				if !ok {
					return "", fmt.Errorf("virt: rewriting domain XML: no new path for disk source %q", old)
				}
				diskOld = old
				// The <disk> tag comes first; rewrite it when the type
				// changes.
				if diskType == "block" {
					emit(diskTag.start)
					out.WriteString(startTag(setAttr(diskTag.el, "type", "file"), selfClosing(xmlText[diskTag.start:diskTag.end])))
					copied = diskTag.end
				}
				el := t.Copy()
				if diskType == "block" {
					el = renameAttr(el, "dev", "file")
				}
				el = setAttr(el, "file", np)
				emit(before)
				out.WriteString(startTag(el, selfClosing(xmlText[before:after])))
				copied = after
			case inDisk && path == "domain/devices/disk/backingStore" && diskOld != "" && flatten[diskOld]:
				skipFrom, skipDep = before, len(stack)
			}
		case xml.EndElement:
			if skipFrom >= 0 && len(stack) == skipDep {
				emit(skipFrom)
				copied = after
				skipFrom = -1
			}
			if len(stack) > 0 {
				if strings.Join(stack, "/") == "domain/devices/disk" {
					inDisk = false
				}
				stack = stack[:len(stack)-1]
			}
		}
	}
	emit(int64(len(xmlText)))
	return out.String(), nil
}

func attr(el xml.StartElement, local string) string {
	for _, a := range el.Attr {
		if a.Name.Space == "" && a.Name.Local == local {
			return a.Value
		}
	}
	return ""
}

func setAttr(el xml.StartElement, local, value string) xml.StartElement {
	for i, a := range el.Attr {
		if a.Name.Space == "" && a.Name.Local == local {
			el.Attr[i].Value = value
			return el
		}
	}
	el.Attr = append(el.Attr, xml.Attr{Name: xml.Name{Local: local}, Value: value})
	return el
}

func renameAttr(el xml.StartElement, from, to string) xml.StartElement {
	for i, a := range el.Attr {
		if a.Name.Space == "" && a.Name.Local == from {
			el.Attr[i].Name.Local = to
		}
	}
	return el
}

func selfClosing(raw string) bool {
	return strings.HasSuffix(strings.TrimSpace(raw), "/>")
}

// startTag serialises a start tag as RawToken returned it (prefixes kept).
func startTag(el xml.StartElement, closed bool) string {
	var b strings.Builder
	b.WriteByte('<')
	b.WriteString(qname(el.Name))
	for _, a := range el.Attr {
		b.WriteByte(' ')
		b.WriteString(qname(a.Name))
		b.WriteString(`="`)
		_ = xml.EscapeText(&b, []byte(a.Value))
		b.WriteByte('"')
	}
	if closed {
		b.WriteByte('/')
	}
	b.WriteByte('>')
	return b.String()
}

func qname(n xml.Name) string {
	if n.Space != "" {
		return n.Space + ":" + n.Local
	}
	return n.Local
}

func stringsReader(s string) io.Reader { return strings.NewReader(s) }
