package virt

import "os"

// FileAttrs are the ownership, permissions and SELinux context a restore
// gives a recreated disk image.
type FileAttrs struct {
	UID, GID int
	Mode     os.FileMode
	// SELinux is the security.selinux extended attribute without its
	// trailing NUL, empty when the file has none.
	SELinux string
}

// selinuxXattr is the extended attribute that holds a file's SELinux
// context (see getxattr(2), selinux(8)).
const selinuxXattr = "security.selinux"
