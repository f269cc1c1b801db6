package bytesize

import "testing"

func TestIEC(t *testing.T) {
	for _, c := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1024, "1.0 KiB"},
		{1536, "1.5 KiB"},
		{152.5 * (1 << 20), "152.5 MiB"},
		{1 << 40, "1.0 TiB"},
		{1<<63 - 1, "8.0 EiB"},
	} {
		if got := IEC(c.n); got != c.want {
			t.Errorf("IEC(%d) = %q, want %q", c.n, got, c.want)
		}
	}
}
