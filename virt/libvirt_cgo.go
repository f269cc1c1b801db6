//go:build cgo

package virt

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"libvirt.org/go/libvirt"
)

// Conn is a connection to a hypervisor. It is safe for concurrent use, as
// libvirt connections are.
//
// libvirt calls cannot be interrupted: every method checks ctx before it
// starts and returns ctx.Err() when it is already done, but a call in
// progress (a save of a large guest) runs to its end.
type Conn struct {
	c   *libvirt.Connect
	uri string
}

// Connect opens a read-write connection to uri (DefaultURI when empty).
func Connect(ctx context.Context, uri string) (*Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if uri == "" {
		uri = DefaultURI
	}
	c, err := libvirt.NewConnect(uri)
	if err != nil {
		return nil, fmt.Errorf("virt: connecting to %s: %w", uri, err)
	}
	return &Conn{c: c, uri: uri}, nil
}

// URI returns the URI the connection was opened with.
func (c *Conn) URI() string { return c.uri }

// Close closes the connection.
func (c *Conn) Close() error {
	if _, err := c.c.Close(); err != nil {
		return fmt.Errorf("virt: closing connection: %w", err)
	}
	return nil
}

// Domain is a libvirt domain of a Conn. Release it with Free.
type Domain struct {
	d    *libvirt.Domain
	conn *Conn
	name string
}

// Domains returns the domains (active and inactive), sorted by name. With
// names, only those are returned, in the order given; names that do not
// exist make it fail with a *NotFoundError listing all of them.
func (c *Conn) Domains(ctx context.Context, names ...string) ([]*Domain, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(names) > 0 {
		var out []*Domain
		var missing []string
		for _, n := range names {
			d, err := c.c.LookupDomainByName(n)
			if err != nil {
				if isNoDomain(err) {
					missing = append(missing, n)
					continue
				}
				freeAll(out)
				return nil, fmt.Errorf("virt: looking up %s: %w", n, err)
			}
			out = append(out, &Domain{d: d, conn: c, name: n})
		}
		if len(missing) > 0 {
			freeAll(out)
			return nil, &NotFoundError{Names: missing}
		}
		return out, nil
	}
	all, err := c.c.ListAllDomains(0)
	if err != nil {
		return nil, fmt.Errorf("virt: listing domains: %w", err)
	}
	out := make([]*Domain, 0, len(all))
	for i := range all {
		d := all[i]
		name, err := d.GetName()
		if err != nil {
			for j := i; j < len(all); j++ {
				_ = all[j].Free()
			}
			freeAll(out)
			return nil, fmt.Errorf("virt: domain name: %w", err)
		}
		out = append(out, &Domain{d: &d, conn: c, name: name})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

// Lookup returns the domain with this name, or an error matching
// ErrDomainNotFound.
func (c *Conn) Lookup(ctx context.Context, name string) (*Domain, error) {
	ds, err := c.Domains(ctx, name)
	if err != nil {
		return nil, err
	}
	return ds[0], nil
}

// Exists reports whether a domain with this name or this UUID is defined
// or running; uuid may be empty.
func (c *Conn) Exists(ctx context.Context, name, uuid string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if d, err := c.c.LookupDomainByName(name); err == nil {
		_ = d.Free()
		return true, nil
	} else if !isNoDomain(err) {
		return false, fmt.Errorf("virt: looking up %s: %w", name, err)
	}
	if uuid == "" {
		return false, nil
	}
	if d, err := c.c.LookupDomainByUUIDString(uuid); err == nil {
		_ = d.Free()
		return true, nil
	} else if !isNoDomain(err) && !isInvalidArg(err) {
		return false, fmt.Errorf("virt: looking up UUID %s: %w", uuid, err)
	}
	return false, nil
}

// Define defines (makes persistent) a domain from XML. It refuses, with an
// error wrapping ErrDomainExists, when a domain with the same name or UUID
// exists, because libvirt would otherwise silently replace that domain's
// definition.
func (c *Conn) Define(ctx context.Context, xmlText string) (*Domain, error) {
	dx, err := ParseDomain(stringsReader(xmlText))
	if err != nil {
		return nil, err
	}
	exists, err := c.Exists(ctx, dx.Name, dx.UUID)
	if err != nil {
		return nil, err
	}
	if exists {
		return nil, fmt.Errorf("%w: %s (name or UUID %s)", ErrDomainExists, dx.Name, dx.UUID)
	}
	d, err := c.c.DomainDefineXML(xmlText)
	if err != nil {
		return nil, fmt.Errorf("virt: defining %s: %w", dx.Name, err)
	}
	return &Domain{d: d, conn: c, name: dx.Name}, nil
}

// Restore starts a domain from a memory image written by Domain.Save
// (virDomainRestoreFlags). xmlText, when not empty, replaces the domain
// XML stored in the image (for instance with rewritten disk paths; it must
// describe the same guest). The guest comes back in the state the image
// recorded (running for a guest that was running when saved), or paused
// when paused is true.
func (c *Conn) Restore(ctx context.Context, path, xmlText string, paused bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var flags libvirt.DomainSaveRestoreFlags
	if paused {
		flags = libvirt.DOMAIN_SAVE_PAUSED
	}
	if err := c.c.DomainRestoreFlags(path, xmlText, flags); err != nil {
		return fmt.Errorf("virt: restoring from %s: %w", path, err)
	}
	return nil
}

// SaveImageXML returns the domain XML stored in a memory image
// (virDomainSaveImageGetXMLDesc), with security-sensitive parts.
func (c *Conn) SaveImageXML(ctx context.Context, path string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	x, err := c.c.DomainSaveImageGetXMLDesc(path, libvirt.DOMAIN_SAVE_IMAGE_XML_SECURE)
	if err != nil {
		return "", fmt.Errorf("virt: reading the domain XML of %s: %w", path, err)
	}
	return x, nil
}

// DefineSaveImageXML replaces the domain XML stored in a memory image
// (virDomainSaveImageDefineXML), so that a later `virsh restore` uses it.
func (c *Conn) DefineSaveImageXML(ctx context.Context, path, xmlText string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := c.c.DomainSaveImageDefineXML(path, xmlText, 0); err != nil {
		return fmt.Errorf("virt: updating the domain XML of %s: %w", path, err)
	}
	return nil
}

// Name returns the domain's name.
func (d *Domain) Name() string { return d.name }

// UUID returns the domain's UUID as a string.
func (d *Domain) UUID() (string, error) {
	u, err := d.d.GetUUIDString()
	if err != nil {
		return "", fmt.Errorf("virt: %s: uuid: %w", d.name, err)
	}
	return u, nil
}

// State returns the domain's state.
func (d *Domain) State(ctx context.Context) (DomainState, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	s, _, err := d.d.GetState()
	if err != nil {
		return "", fmt.Errorf("virt: %s: state: %w", d.name, err)
	}
	switch s {
	case libvirt.DOMAIN_RUNNING:
		return StateRunning, nil
	case libvirt.DOMAIN_BLOCKED:
		return StateBlocked, nil
	case libvirt.DOMAIN_PAUSED:
		return StatePaused, nil
	case libvirt.DOMAIN_SHUTDOWN:
		return StateShutdown, nil
	case libvirt.DOMAIN_SHUTOFF:
		return StateShutoff, nil
	case libvirt.DOMAIN_CRASHED:
		return StateCrashed, nil
	case libvirt.DOMAIN_PMSUSPENDED:
		return StatePMSuspended, nil
	}
	return StateNoState, nil
}

// HasManagedSave reports whether the domain has a managed save image
// (virDomainHasManagedSaveImage): memory that `virsh start` resumes from,
// kept by libvirt outside the domain's disks.
func (d *Domain) HasManagedSave() (bool, error) {
	ok, err := d.d.HasManagedSaveImage(0)
	if err != nil {
		return false, fmt.Errorf("virt: %s: managed save: %w", d.name, err)
	}
	return ok, nil
}

// Persistent reports whether the domain is defined (not transient).
func (d *Domain) Persistent() (bool, error) {
	p, err := d.d.IsPersistent()
	if err != nil {
		return false, fmt.Errorf("virt: %s: %w", d.name, err)
	}
	return p, nil
}

// XML returns the domain's XML with security-sensitive parts (as a backup
// needs them): the persistent definition when inactive is true, the live
// one otherwise (the same for a shut-off domain).
func (d *Domain) XML(ctx context.Context, inactive bool) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	flags := libvirt.DOMAIN_XML_SECURE
	if inactive {
		flags |= libvirt.DOMAIN_XML_INACTIVE
	}
	x, err := d.d.GetXMLDesc(flags)
	if err != nil {
		return "", fmt.Errorf("virt: %s: XML: %w", d.name, err)
	}
	return x, nil
}

// Save saves the memory of an active domain to path (virDomainSave) and
// stops it; Conn.Restore brings it back.
func (d *Domain) Save(ctx context.Context, path string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := d.d.Save(path); err != nil {
		return fmt.Errorf("virt: saving %s to %s: %w", d.name, path, err)
	}
	return nil
}

// Start boots a defined, shut-off domain (virDomainCreate).
func (d *Domain) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := d.d.Create(); err != nil {
		return fmt.Errorf("virt: starting %s: %w", d.name, err)
	}
	return nil
}

// Undefine removes the domain's persistent definition (an active domain
// keeps running, as a transient one).
func (d *Domain) Undefine(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := d.d.Undefine(); err != nil {
		return fmt.Errorf("virt: undefining %s: %w", d.name, err)
	}
	return nil
}

// Destroy stops an active domain at once, like pulling the plug.
func (d *Domain) Destroy(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := d.d.Destroy(); err != nil {
		return fmt.Errorf("virt: destroying %s: %w", d.name, err)
	}
	return nil
}

// Free releases the handle (not the domain).
func (d *Domain) Free() error {
	if err := d.d.Free(); err != nil {
		return fmt.Errorf("virt: %w", err)
	}
	return nil
}

func freeAll(ds []*Domain) {
	for _, d := range ds {
		_ = d.Free()
	}
}

func isNoDomain(err error) bool {
	var le libvirt.Error
	return errors.As(err, &le) && le.Code == libvirt.ERR_NO_DOMAIN
}

func isInvalidArg(err error) bool {
	var le libvirt.Error
	return errors.As(err, &le) && le.Code == libvirt.ERR_INVALID_ARG
}
