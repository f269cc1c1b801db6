//go:build !cgo

package virt

import "context"

// Conn is a connection to a hypervisor; this build has none.
type Conn struct{}

// Domain is a libvirt domain; this build has none.
type Domain struct{}

// Connect returns ErrUnavailable: this build has no cgo, so no libvirt.
func Connect(ctx context.Context, uri string) (*Conn, error) { return nil, ErrUnavailable }

// URI returns "".
func (c *Conn) URI() string { return "" }

// Close returns ErrUnavailable.
func (c *Conn) Close() error { return ErrUnavailable }

// Domains returns ErrUnavailable.
func (c *Conn) Domains(ctx context.Context, names ...string) ([]*Domain, error) {
	return nil, ErrUnavailable
}

// Lookup returns ErrUnavailable.
func (c *Conn) Lookup(ctx context.Context, name string) (*Domain, error) { return nil, ErrUnavailable }

// Exists returns ErrUnavailable.
func (c *Conn) Exists(ctx context.Context, name, uuid string) (bool, error) {
	return false, ErrUnavailable
}

// Define returns ErrUnavailable.
func (c *Conn) Define(ctx context.Context, xmlText string) (*Domain, error) {
	return nil, ErrUnavailable
}

// Restore returns ErrUnavailable.
func (c *Conn) Restore(ctx context.Context, path, xmlText string, paused bool) error {
	return ErrUnavailable
}

// SaveImageXML returns ErrUnavailable.
func (c *Conn) SaveImageXML(ctx context.Context, path string) (string, error) {
	return "", ErrUnavailable
}

// DefineSaveImageXML returns ErrUnavailable.
func (c *Conn) DefineSaveImageXML(ctx context.Context, path, xmlText string) error {
	return ErrUnavailable
}

// Name returns "".
func (d *Domain) Name() string { return "" }

// UUID returns ErrUnavailable.
func (d *Domain) UUID() (string, error) { return "", ErrUnavailable }

// State returns ErrUnavailable.
func (d *Domain) State(ctx context.Context) (DomainState, error) { return "", ErrUnavailable }

// HasManagedSave returns ErrUnavailable.
func (d *Domain) HasManagedSave() (bool, error) { return false, ErrUnavailable }

// Persistent returns ErrUnavailable.
func (d *Domain) Persistent() (bool, error) { return false, ErrUnavailable }

// XML returns ErrUnavailable.
func (d *Domain) XML(ctx context.Context, inactive bool) (string, error) {
	return "", ErrUnavailable
}

// Save returns ErrUnavailable.
func (d *Domain) Save(ctx context.Context, path string) error { return ErrUnavailable }

// Start returns ErrUnavailable.
func (d *Domain) Start(ctx context.Context) error { return ErrUnavailable }

// Free returns ErrUnavailable.
func (d *Domain) Free() error { return ErrUnavailable }

// Undefine returns ErrUnavailable.
func (d *Domain) Undefine(ctx context.Context) error { return ErrUnavailable }

// Destroy returns ErrUnavailable.
func (d *Domain) Destroy(ctx context.Context) error { return ErrUnavailable }
