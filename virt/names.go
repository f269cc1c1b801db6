package virt

import (
	"fmt"
	"path/filepath"
	"strings"
	"unicode"
)

// maxNameLen bounds names read from a backup; Linux file names are at most
// 255 bytes.
const maxNameLen = 255

// CheckName returns an error wrapping ErrUnsafeName unless name can be
// used as one file name inside a directory: not empty, not "." or "..",
// no path separator, no NUL or other control character, at most 255
// bytes. Domain names and stored file names read from a backup must pass
// it before they are joined to a path.
func CheckName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty name", ErrUnsafeName)
	case name == "." || name == "..":
		return fmt.Errorf("%w: %q", ErrUnsafeName, name)
	case len(name) > maxNameLen:
		return fmt.Errorf("%w: name of %d bytes is longer than %d", ErrUnsafeName, len(name), maxNameLen)
	case strings.ContainsAny(name, `/\`):
		return fmt.Errorf("%w: %q contains a path separator", ErrUnsafeName, name)
	case strings.HasPrefix(name, "-"):
		// Names are passed to qemu-img and xz; a leading dash would read
		// as an option.
		return fmt.Errorf("%w: %q starts with '-'", ErrUnsafeName, name)
	}
	for _, r := range name {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return fmt.Errorf("%w: %q contains a control or invalid character", ErrUnsafeName, name)
		}
	}
	return nil
}

// JoinName joins dir and a name that must pass CheckName, and checks that
// the result stays directly inside dir.
func JoinName(dir, name string) (string, error) {
	if err := CheckName(name); err != nil {
		return "", err
	}
	p := filepath.Join(dir, name)
	if filepath.Dir(p) != filepath.Clean(dir) {
		return "", fmt.Errorf("%w: %q leaves %s", ErrUnsafeName, name, dir)
	}
	return p, nil
}
