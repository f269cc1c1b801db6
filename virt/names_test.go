package virt

import (
	"errors"
	"testing"
)

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"guest", "guest.vda.qcow2", "a b", "ünïcode", "x..y"} {
		if err := CheckName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "../../etc", "/etc/passwd", "a/b", `a\b`, "a\x00b", "a\nb", "-rf", string(make([]byte, 256))} {
		if err := CheckName(bad); !errors.Is(err, ErrUnsafeName) {
			t.Errorf("%q: %v, want ErrUnsafeName", bad, err)
		}
	}
}

func TestJoinName(t *testing.T) {
	p, err := JoinName("/restore/", "g.vda.raw")
	if err != nil || p != "/restore/g.vda.raw" {
		t.Fatalf("%q %v", p, err)
	}
	if _, err := JoinName("/restore", "../../etc"); !errors.Is(err, ErrUnsafeName) {
		t.Fatalf("escape accepted: %v", err)
	}
}
