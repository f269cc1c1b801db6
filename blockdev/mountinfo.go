package blockdev

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// A Mount is one line of /proc/self/mountinfo: a filesystem, or part of
// one (a bind mount), attached at a mount point. See proc_pid_mountinfo(5).
type Mount struct {
	// ID and ParentID identify the mount and its parent in this mount
	// namespace.
	ID, ParentID int
	// Major and Minor are the device number of the filesystem's
	// superblock; every bind mount of that filesystem carries the same
	// ones. For most block-device filesystems they are the device's
	// numbers and st_dev of its files. btrfs is the exception: an
	// anonymous number (0:N) of its own, and st_dev differs again per
	// subvolume.
	Major, Minor uint32
	// Root is the directory of the filesystem seen at MountPoint: "/"
	// for an ordinary mount, the bound directory for a bind mount.
	Root string
	// MountPoint is the absolute path where it is mounted, unescaped.
	MountPoint string
	// Options are the per-mount options (rw, noatime, ...).
	Options string
	// Optional holds the optional fields (shared:N, master:N, ...).
	Optional []string
	// FSType is the filesystem type (ext4, xfs, ...), with any subtype.
	FSType string
	// Source is the mount source, usually the device path (/dev/loop0),
	// unescaped; "none" or a name for virtual filesystems.
	Source string
	// SuperOptions are the per-superblock options.
	SuperOptions string
}

// ErrMountInfo reports a mountinfo line that does not follow the format.
var ErrMountInfo = errors.New("blockdev: malformed mountinfo")

// maxMountInfoLine bounds one line. Paths are at most PATH_MAX, four times
// that escaped, but an overlayfs line lists every lower layer in its super
// options (up to 500 with lowerdir+), and one long line must not make the
// mounts of every device unreadable on a container host.
const maxMountInfoLine = 1 << 20

// ParseMountInfo reads the mountinfo format of proc_pid_mountinfo(5) from
// r and returns the mounts for which filter returns true (all of them when
// filter is nil), in the order listed. It opens nothing itself, so it works
// on any saved copy. A malformed line is an error wrapping [ErrMountInfo]
// that names the line.
func ParseMountInfo(r io.Reader, filter func(*Mount) bool) ([]Mount, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxMountInfoLine)
	var mounts []Mount
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		m, err := parseMountInfoLine(line)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %v", ErrMountInfo, n, err)
		}
		if filter == nil || filter(&m) {
			mounts = append(mounts, m)
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("%w: line longer than %d bytes", ErrMountInfo, maxMountInfoLine)
		}
		return nil, fmt.Errorf("blockdev: reading mountinfo: %w", err)
	}
	return mounts, nil
}

// parseMountInfoLine parses
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// Fields are separated by single spaces, and split on them, not on runs of
// whitespace: a field may be empty (mount -t tmpfs "" /mnt gives an empty
// source, printed as two spaces), and splitting on runs would shift the
// super options into the source.
func parseMountInfoLine(line string) (Mount, error) {
	f := strings.Split(line, " ")
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	// Six fields before the separator, three after it. Old kernels may
	// omit the super options; accept that.
	if sep < 0 || len(f) < sep+3 {
		return Mount{}, fmt.Errorf("want at least 6 fields, '-', 2 fields; got %q", line)
	}
	var m Mount
	var err error
	if m.ID, err = strconv.Atoi(f[0]); err != nil {
		return Mount{}, fmt.Errorf("mount ID %q: %v", f[0], err)
	}
	if m.ParentID, err = strconv.Atoi(f[1]); err != nil {
		return Mount{}, fmt.Errorf("parent ID %q: %v", f[1], err)
	}
	if m.Major, m.Minor, err = parseDevNumber(f[2]); err != nil {
		return Mount{}, err
	}
	if m.Root, err = unescapeOctal(f[3]); err != nil {
		return Mount{}, fmt.Errorf("root: %v", err)
	}
	if m.MountPoint, err = unescapeOctal(f[4]); err != nil {
		return Mount{}, fmt.Errorf("mount point: %v", err)
	}
	if m.Root == "" || m.MountPoint == "" || f[5] == "" {
		return Mount{}, fmt.Errorf("empty root, mount point or options in %q", line)
	}
	m.Options = f[5]
	if sep > 6 {
		m.Optional = append([]string(nil), f[6:sep]...)
	}
	if m.FSType, err = unescapeOctal(f[sep+1]); err != nil || m.FSType == "" {
		return Mount{}, fmt.Errorf("filesystem type %q: %v", f[sep+1], err)
	}
	if m.Source, err = unescapeOctal(f[sep+2]); err != nil {
		return Mount{}, fmt.Errorf("source: %v", err)
	}
	if len(f) > sep+3 {
		m.SuperOptions = f[sep+3]
	}
	return m, nil
}

func parseDevNumber(s string) (major, minor uint32, err error) {
	a, b, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, fmt.Errorf("device number %q is not major:minor", s)
	}
	ma, err1 := strconv.ParseUint(a, 10, 32)
	mi, err2 := strconv.ParseUint(b, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("device number %q is not major:minor", s)
	}
	return uint32(ma), uint32(mi), nil
}

// unescapeOctal undoes the kernel's mangling of paths in mountinfo: space,
// tab, newline and backslash are written as \040, \011, \012 and \134
// (seq_file's mangle_path). Any \ooo is decoded; a backslash not followed by
// three octal digits is an error rather than a guess.
func unescapeOctal(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		if i+4 > len(s) {
			return "", fmt.Errorf("truncated escape in %q", s)
		}
		v := 0
		for _, d := range []byte(s[i+1 : i+4]) {
			if d < '0' || d > '7' {
				return "", fmt.Errorf("bad escape %q in %q", s[i:i+4], s)
			}
			v = v*8 + int(d-'0')
		}
		if v > 0xff {
			return "", fmt.Errorf("escape %q out of range in %q", s[i:i+4], s)
		}
		b.WriteByte(byte(v))
		i += 3
	}
	return b.String(), nil
}
