package virt

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ReadAttrs returns the owner, permission bits and SELinux context of
// path (following symlinks, as libvirt does for disk sources).
func ReadAttrs(path string) (FileAttrs, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return FileAttrs{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return FileAttrs{}, fmt.Errorf("virt: no ownership for %s", path)
	}
	a := FileAttrs{UID: int(st.Uid), GID: int(st.Gid), Mode: fi.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)}
	buf := make([]byte, 256)
	n, err := unix.Getxattr(path, selinuxXattr, buf)
	if errors.Is(err, unix.ERANGE) {
		// A longer context than usual: ask for its size (bounded by the
		// kernel's XATTR_SIZE_MAX, 64 KiB).
		if n, err = unix.Getxattr(path, selinuxXattr, nil); err == nil {
			buf = make([]byte, n)
			n, err = unix.Getxattr(path, selinuxXattr, buf)
		}
	}
	switch {
	case err == nil:
		a.SELinux = strings.TrimRight(string(buf[:n]), "\x00")
	case errors.Is(err, unix.ENODATA), errors.Is(err, unix.EOPNOTSUPP):
	default:
		return FileAttrs{}, &os.PathError{Op: "getxattr(" + selinuxXattr + ")", Path: path, Err: err}
	}
	return a, nil
}

// ApplyAttrs gives f the owner, mode and SELinux context of a. The owner
// and mode must succeed; the SELinux context is set when there is one, and
// an error setting it (a host without SELinux may refuse the attribute) is
// returned separately so that a caller can report it as a warning.
func ApplyAttrs(f *os.File, a FileAttrs) (selinuxErr error, err error) {
	if err := f.Chown(a.UID, a.GID); err != nil {
		return nil, err
	}
	if err := f.Chmod(a.Mode); err != nil {
		return nil, err
	}
	if a.SELinux != "" {
		if err := unix.Fsetxattr(int(f.Fd()), selinuxXattr, []byte(a.SELinux), 0); err != nil {
			return &os.PathError{Op: "fsetxattr(" + selinuxXattr + ")", Path: f.Name(), Err: err}, nil
		}
	}
	return nil, nil
}
