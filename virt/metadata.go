package virt

import (
	"bytes"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// MetadataVersion is the format version Metadata.WriteTo writes and
// ReadMetadata accepts.
const MetadataVersion = 1

// MetadataFile is the name of the metadata document in a backup folder.
const MetadataFile = "backup.xml"

// Compression names the codec of a stored file.
const (
	CompressionNone = "none"
	CompressionLZMA = "lzma" // an .xz stream, which stock xz reads
)

// Metadata describes one backup folder: the domains it holds and, for
// each, its files.
type Metadata struct {
	XMLName xml.Name `xml:"virtbackup"`
	// Version is MetadataVersion.
	Version int `xml:"version,attr"`
	// Created is when the backup started (UTC, RFC 3339).
	Created time.Time `xml:"created"`
	// Hypervisor is the URI the domains came from.
	Hypervisor string           `xml:"hypervisor"`
	Domains    []DomainMetadata `xml:"domain"`
}

// DomainMetadata describes one backed-up domain.
type DomainMetadata struct {
	Name string `xml:"name,attr"`
	UUID string `xml:"uuid,attr"`
	// Running is true when the domain was active (running or paused) at
	// backup time and its memory was saved to Memory.
	Running bool `xml:"running,attr"`
	// State is the libvirt state at backup time ("running", "shutoff", ...).
	State string `xml:"state,attr,omitempty"`
	// XML is the domain's libvirt XML (<name>.xml).
	XML StoredFile `xml:"xml"`
	// Memory is the saved memory (<name>.sav), present when Running.
	Memory *StoredFile    `xml:"memory,omitempty"`
	Disks  []DiskMetadata `xml:"disk"`
}

// StoredFile is a file of the backup folder with its checksum.
type StoredFile struct {
	// File is a plain file name inside the backup folder.
	File string `xml:"file,attr"`
	// Size is the stored file's length in bytes.
	Size int64 `xml:"size,attr"`
	// SHA256 is the hex SHA-256 of the stored file.
	SHA256 string `xml:"sha256,attr"`
}

// DiskMetadata describes one backed-up disk.
type DiskMetadata struct {
	// Domain is the originating domain's name.
	Domain string `xml:"domain,attr"`
	// Type is the disk type in the domain XML ("file" or "block").
	Type string `xml:"type,attr"`
	// Device is "disk", "cdrom", ...
	Device string `xml:"device,attr"`
	// Target is the guest device name ("vda").
	Target string `xml:"target,attr"`
	// Format is the image format ("raw" or "qcow2").
	Format string `xml:"format,attr"`
	// Source is the original file or device path.
	Source string `xml:"source"`
	// Size is the original file's (or device's) size in bytes: a restore
	// recreates the image with exactly this size.
	Size int64 `xml:"size"`
	// Compression is CompressionNone or CompressionLZMA.
	Compression string `xml:"compression"`
	// UID, GID and Mode are the original file's owner and permission bits
	// (octal in the XML).
	UID  int         `xml:"owner>uid"`
	GID  int         `xml:"owner>gid"`
	Mode os.FileMode `xml:"-"`
	// ModeOctal is Mode as written in the XML; use Mode.
	ModeOctal string `xml:"owner>mode"`
	// SELinux is the security.selinux context, empty when there is none.
	SELinux string `xml:"selinux,omitempty"`
	// SHA256 is the hex SHA-256 of the image's logical content (Size
	// bytes, holes read as zeros), before compression.
	SHA256 string `xml:"sha256"`
	// Flattened says the image had a backing chain, merged into one
	// image at backup time; BackingChain lists the files it came from.
	Flattened    bool     `xml:"flattened,omitempty"`
	BackingChain []string `xml:"backing>file,omitempty"`
	// Stored is the backup file holding the image (an .xz file when
	// compressed; then its size is the compressed size).
	Stored StoredFile `xml:"stored"`
}

// WriteTo writes the metadata as an indented XML document.
func (m *Metadata) WriteTo(w io.Writer) (int64, error) {
	c := *m
	c.Version = MetadataVersion
	c.Domains = append([]DomainMetadata(nil), m.Domains...)
	for i := range c.Domains {
		c.Domains[i].Disks = append([]DiskMetadata(nil), m.Domains[i].Disks...)
		for j := range c.Domains[i].Disks {
			d := &c.Domains[i].Disks[j]
			d.ModeOctal = modeOctal(d.Mode)
		}
	}
	data, err := xml.MarshalIndent(&c, "", "  ")
	if err != nil {
		return 0, fmt.Errorf("virt: encoding metadata: %w", err)
	}
	data = append([]byte(xml.Header), append(data, '\n')...)
	n, err := w.Write(data)
	return int64(n), err
}

func modeOctal(m os.FileMode) string {
	v := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		v |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		v |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		v |= 0o1000
	}
	return fmt.Sprintf("%04o", v)
}

func parseMode(s string) (os.FileMode, error) {
	v, err := strconv.ParseUint(strings.TrimSpace(s), 8, 32)
	if err != nil || v > 0o7777 {
		return 0, fmt.Errorf("mode %q is not an octal permission", s)
	}
	m := os.FileMode(v & 0o777)
	if v&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if v&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if v&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m, nil
}

// ReadMetadata reads and validates a metadata document (at most 16 MiB).
// Everything in it is treated as untrusted: names must pass CheckName,
// sizes must be non-negative, checksums must be 64 hex digits, and no two
// entries may name the same stored file. Errors wrap ErrCorruptMetadata or
// ErrUnsafeName.
func ReadMetadata(r io.Reader) (*Metadata, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxXMLSize+1))
	if err != nil {
		return nil, fmt.Errorf("virt: reading metadata: %w", err)
	}
	if len(data) > maxXMLSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrCorruptMetadata, maxXMLSize)
	}
	var m Metadata
	dec := xml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptMetadata, err)
	}
	if m.Version != MetadataVersion {
		return nil, fmt.Errorf("%w: format version %d, this program reads version %d", ErrCorruptMetadata, m.Version, MetadataVersion)
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

func (m *Metadata) validate() error {
	files := map[string]bool{MetadataFile: true}
	names := map[string]bool{}
	useFile := func(what string, f StoredFile) error {
		if err := CheckName(f.File); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if files[f.File] {
			return fmt.Errorf("%w: %s: file %q is used twice", ErrCorruptMetadata, what, f.File)
		}
		files[f.File] = true
		if f.Size < 0 {
			return fmt.Errorf("%w: %s: negative size", ErrCorruptMetadata, what)
		}
		if !isSHA256(f.SHA256) {
			return fmt.Errorf("%w: %s: checksum %q is not a hex SHA-256", ErrCorruptMetadata, what, f.SHA256)
		}
		return nil
	}
	for i := range m.Domains {
		d := &m.Domains[i]
		if err := CheckName(d.Name); err != nil {
			return fmt.Errorf("virt: metadata domain %d: %w", i, err)
		}
		if names[d.Name] {
			return fmt.Errorf("%w: domain %q appears twice", ErrCorruptMetadata, d.Name)
		}
		names[d.Name] = true
		if err := useFile("domain "+d.Name+" xml", d.XML); err != nil {
			return err
		}
		if d.Running != (d.Memory != nil) {
			return fmt.Errorf("%w: domain %q: running=%v but memory file present=%v", ErrCorruptMetadata, d.Name, d.Running, d.Memory != nil)
		}
		if d.Memory != nil {
			if err := useFile("domain "+d.Name+" memory", *d.Memory); err != nil {
				return err
			}
		}
		targets := map[string]bool{}
		for j := range d.Disks {
			k := &d.Disks[j]
			what := fmt.Sprintf("domain %s disk %d", d.Name, j)
			if k.Domain != d.Name {
				return fmt.Errorf("%w: %s belongs to domain %q", ErrCorruptMetadata, what, k.Domain)
			}
			if err := CheckName(k.Target); err != nil {
				return fmt.Errorf("%s target: %w", what, err)
			}
			if targets[k.Target] {
				return fmt.Errorf("%w: %s: target %q twice", ErrCorruptMetadata, what, k.Target)
			}
			targets[k.Target] = true
			if k.Source == "" {
				return fmt.Errorf("%w: %s has no source", ErrCorruptMetadata, what)
			}
			if k.Size < 0 {
				return fmt.Errorf("%w: %s: negative size", ErrCorruptMetadata, what)
			}
			if k.Compression != CompressionNone && k.Compression != CompressionLZMA {
				return fmt.Errorf("%w: %s: unknown compression %q", ErrCorruptMetadata, what, k.Compression)
			}
			if k.Format != "raw" && k.Format != "qcow2" {
				return fmt.Errorf("%w: %s: unknown format %q", ErrCorruptMetadata, what, k.Format)
			}
			if !isSHA256(k.SHA256) {
				return fmt.Errorf("%w: %s: checksum %q is not a hex SHA-256", ErrCorruptMetadata, what, k.SHA256)
			}
			mode, err := parseMode(k.ModeOctal)
			if err != nil {
				return fmt.Errorf("%w: %s: %v", ErrCorruptMetadata, what, err)
			}
			k.Mode = mode
			if k.UID < 0 || k.GID < 0 {
				return fmt.Errorf("%w: %s: negative owner", ErrCorruptMetadata, what)
			}
			if err := useFile(what, k.Stored); err != nil {
				return err
			}
		}
	}
	return nil
}

func isSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// Domain returns the metadata of the named domain, or nil.
func (m *Metadata) Domain(name string) *DomainMetadata {
	for i := range m.Domains {
		if m.Domains[i].Name == name {
			return &m.Domains[i]
		}
	}
	return nil
}
