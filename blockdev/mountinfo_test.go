package blockdev

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// A mountinfo excerpt covering what the parser must get right: optional
// fields (none, one, several), escaped paths, a bind mount of a
// subdirectory, a loop device mounted twice, and missing super options.
const sampleMountInfo = `22 27 0:21 / /proc rw,relatime shared:12 - proc proc rw
27 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
95 27 7:3 / /mnt/with\040space\011tab rw,relatime shared:50 - ext4 /dev/loop3 rw
96 27 7:3 /sub/dir /srv/bind rw,relatime shared:50 master:3 propagate_from:2 - ext4 /dev/loop3 rw
97 27 7:4 / /mnt/x rw - xfs /dev/loop4 rw,attr2,inode64
98 27 7:4 / /mnt/back\134slash rw - xfs /dev/loop4
99 27 0:50 / /run/user rw,nosuid - tmpfs tmpfs rw,size=100k
100 27 0:51 / /mnt/anon rw,relatime - tmpfs  rw,size=4k
`

func TestParseMountInfo(t *testing.T) {
	mounts, err := ParseMountInfo(strings.NewReader(sampleMountInfo), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) != 8 {
		t.Fatalf("got %d mounts, want 8", len(mounts))
	}
	want := Mount{ID: 96, ParentID: 27, Major: 7, Minor: 3, Root: "/sub/dir", MountPoint: "/srv/bind",
		Options: "rw,relatime", Optional: []string{"shared:50", "master:3", "propagate_from:2"},
		FSType: "ext4", Source: "/dev/loop3", SuperOptions: "rw"}
	if !reflect.DeepEqual(mounts[3], want) {
		t.Errorf("bind mount:\n got %+v\nwant %+v", mounts[3], want)
	}
	if got := mounts[2].MountPoint; got != "/mnt/with space\ttab" {
		t.Errorf("escaped mount point = %q", got)
	}
	if got := mounts[5].MountPoint; got != `/mnt/back\slash` {
		t.Errorf("escaped backslash = %q", got)
	}
	if mounts[5].SuperOptions != "" || mounts[4].SuperOptions != "rw,attr2,inode64" {
		t.Errorf("super options: %q, %q", mounts[5].SuperOptions, mounts[4].SuperOptions)
	}
	// mount -t tmpfs "" /mnt/anon: an empty source is an empty field
	// (two spaces), not a reason to take the super options for the source.
	if m := mounts[7]; m.Source != "" || m.SuperOptions != "rw,size=4k" || m.FSType != "tmpfs" {
		t.Errorf("empty source: %+v", m)
	}
	if mounts[4].Optional != nil {
		t.Errorf("no optional fields, got %q", mounts[4].Optional)
	}
}

func TestParseMountInfoFilterByDeviceNumber(t *testing.T) {
	mounts, err := ParseMountInfo(strings.NewReader(sampleMountInfo), func(m *Mount) bool {
		return m.Major == 7 && m.Minor == 3
	})
	if err != nil {
		t.Fatal(err)
	}
	var points []string
	for _, m := range mounts {
		points = append(points, m.MountPoint)
	}
	if want := []string{"/mnt/with space\ttab", "/srv/bind"}; !reflect.DeepEqual(points, want) {
		t.Fatalf("mounts of 7:3 = %q, want %q", points, want)
	}
}

func TestParseMountInfoErrors(t *testing.T) {
	for _, line := range []string{
		"22 27 0:21 / /proc rw,relatime proc proc rw",           // no separator
		"22 27 0:21 / /proc rw - proc",                          // too few after separator
		"x 27 0:21 / /proc rw - proc proc rw",                   // bad ID
		"22 y 0:21 / /proc rw - proc proc rw",                   // bad parent ID
		"22 27 0-21 / /proc rw - proc proc rw",                  // bad device number
		"22 27 0:99999999999 / /proc rw - proc proc rw",         // minor overflows
		`22 27 0:21 / /pr\04 rw - proc proc rw`,                 // truncated escape
		`22 27 0:21 / /pr\09x rw - proc proc rw`,                // non-octal escape
		`22 27 0:21 / /pr\777 rw - proc proc rw`,                // escape out of byte range
		"22 27 0:21 / /proc - proc proc rw",                     // mount options missing
		"22 27 0:21 /proc rw - proc proc rw",                    // a field missing
		"22 27 0:21 / /proc rw shared:1 - ext4 " + `\0` + " rw", // bad source escape
		"22 27 0:21 / /proc rw -  /dev/x rw",                    // empty filesystem type
		"22 27 0:21 /  /proc rw - proc proc rw",                 // two spaces: a field shifts
	} {
		_, err := ParseMountInfo(strings.NewReader(line+"\n"), nil)
		if !errors.Is(err, ErrMountInfo) {
			t.Errorf("%q: err = %v, want ErrMountInfo", line, err)
		}
	}
}

func TestParseMountInfoLongLine(t *testing.T) {
	line := "1 2 3:4 / /" + strings.Repeat("a", maxMountInfoLine) + " rw - ext4 /dev/x rw\n"
	if _, err := ParseMountInfo(strings.NewReader(line), nil); !errors.Is(err, ErrMountInfo) {
		t.Fatalf("err = %v, want ErrMountInfo", err)
	}
}

func FuzzParseMountInfo(f *testing.F) {
	f.Add(sampleMountInfo)
	f.Add(`1 2 3:4 / /a\040b rw - ext4 /dev/x rw`)
	f.Add("1 2 3:4 / / rw a b c - t s")
	f.Fuzz(func(t *testing.T, s string) {
		mounts, err := ParseMountInfo(strings.NewReader(s), nil)
		if err != nil {
			if !errors.Is(err, ErrMountInfo) {
				t.Fatalf("error %v does not wrap ErrMountInfo", err)
			}
			return
		}
		for _, m := range mounts {
			if m.FSType == "" || m.Root == "" || m.MountPoint == "" || m.Options == "" {
				t.Fatalf("accepted a mount with empty fields: %+v", m)
			}
		}
	})
}
