package virt

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestAttrsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(src, 0o640|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	a, err := ReadAttrs(src)
	if err != nil {
		t.Fatal(err)
	}
	if a.Mode != 0o640|os.ModeSetgid || a.UID != os.Geteuid() {
		t.Fatalf("attrs %+v", a)
	}
	f, err := os.Create(filepath.Join(dir, "dst"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if os.Geteuid() != 0 {
		t.Skip("chown and security.* xattrs need root")
	}
	a.UID, a.GID = 64055, 108
	a.SELinux = "system_u:object_r:svirt_image_t:s0:c1,c2"
	selErr, err := ApplyAttrs(f, a)
	if err != nil {
		t.Fatal(err)
	}
	if selErr != nil {
		// Without an SELinux policy the kernel may still store the
		// attribute (it does on ext4 and tmpfs); a filesystem that does
		// not is reported, not fatal.
		if !errors.Is(selErr, unix.EOPNOTSUPP) && !errors.Is(selErr, unix.EINVAL) {
			t.Fatalf("selinux: %v", selErr)
		}
		a.SELinux = ""
	}
	b, err := ReadAttrs(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("restored attrs %+v", b)
	if b != a {
		t.Fatalf("applied %+v, read back %+v", a, b)
	}
}

func TestLongSELinuxContext(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("security.* xattrs need root")
	}
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	long := "system_u:object_r:svirt_image_t:s0:" + strings.Repeat("c1,", 200) + "c2"
	if err := unix.Setxattr(p, selinuxXattr, []byte(long), 0); err != nil {
		t.Skipf("filesystem keeps no security.selinux: %v", err)
	}
	a, err := ReadAttrs(p)
	if err != nil || a.SELinux != long {
		t.Fatalf("read %q, %v", a.SELinux, err)
	}
}
