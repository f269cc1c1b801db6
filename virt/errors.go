package virt

import (
	"errors"
	"fmt"
	"strings"
)

var (
	// ErrUnavailable reports that this build has no libvirt (it was built
	// with CGO_ENABLED=0).
	ErrUnavailable = errors.New("virt: libvirt is unavailable in this build (needs cgo)")
	// ErrDomainNotFound reports that a named domain does not exist; the
	// error that carries it is a *NotFoundError.
	ErrDomainNotFound = errors.New("virt: domain not found")
	// ErrDomainExists reports that a restore would replace a domain that
	// is already defined (same name or same UUID).
	ErrDomainExists = errors.New("virt: domain already exists")
	// ErrUnsupportedDisk reports a disk this package cannot copy: a
	// network or pool volume disk, or an unknown image format.
	ErrUnsupportedDisk = errors.New("virt: unsupported disk")
	// ErrUnsafeName reports a domain or file name from a backup that is
	// not a plain file name (separators, "..", control characters).
	ErrUnsafeName = errors.New("virt: unsafe name")
	// ErrCorruptMetadata reports backup metadata that cannot be parsed or
	// is inconsistent.
	ErrCorruptMetadata = errors.New("virt: corrupt backup metadata")
	// ErrChecksum reports content whose SHA-256 differs from the one the
	// metadata records.
	ErrChecksum = errors.New("virt: checksum mismatch")
	// ErrSize reports a stream whose length differs from the recorded size.
	ErrSize = errors.New("virt: size mismatch")
)

// NotFoundError lists the requested domain names that do not exist. It
// matches ErrDomainNotFound with errors.Is.
type NotFoundError struct {
	Names []string
}

func (e *NotFoundError) Error() string {
	return fmt.Sprintf("virt: domain not found: %s", strings.Join(e.Names, ", "))
}

// Is makes errors.Is(err, ErrDomainNotFound) true.
func (e *NotFoundError) Is(target error) bool { return target == ErrDomainNotFound }

// IsNotFound reports whether err says that a domain does not exist.
func IsNotFound(err error) bool { return errors.Is(err, ErrDomainNotFound) }
