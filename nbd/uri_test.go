package nbd

import "testing"

func TestParseURI(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Target
	}{
		{"nbd://example.com/disk0", Target{"tcp", "example.com:10809", "disk0", false, "example.com"}},
		{"nbd://127.0.0.1:10900/", Target{"tcp", "127.0.0.1:10900", "", false, "127.0.0.1"}},
		{"nbd://[::1]:10900/a%20b", Target{"tcp", "[::1]:10900", "a b", false, "::1"}},
		{"nbds://backup/x", Target{"tcp", "backup:10809", "x", true, "backup"}},
		{"nbd+unix:///e?socket=/run/s.sock", Target{"unix", "/run/s.sock", "e", false, "localhost"}},
		{"nbds+unix:///e?socket=/s&tls-hostname=h", Target{"unix", "/s", "e", true, "h"}},
	} {
		got, err := ParseURI(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseURI(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if again, err := ParseURI(got.String()); err != nil || again.Network != got.Network || again.Address != got.Address || again.Export != got.Export || again.TLS != got.TLS {
			t.Errorf("round trip of %q via %q: %+v, %v", tc.in, got.String(), again, err)
		}
	}
	for _, bad := range []string{
		"", "http://h/x", "nbd:///x", "nbd://h:/x", "nbd://u@h/x", "nbd://h/x?socket=/s",
		"nbd+unix:///x", "nbd+unix://h/x?socket=/s", "nbd+unix:///x?socket=/s&foo=1", "nbd://h/a%00b",
	} {
		if _, err := ParseURI(bad); err == nil {
			t.Errorf("ParseURI(%q) succeeded", bad)
		}
	}
}

func FuzzParseURI(f *testing.F) {
	f.Add("nbd://example.com:10809/disk0")
	f.Add("nbd+unix:///e?socket=/run/s.sock")
	f.Fuzz(func(t *testing.T, s string) {
		tg, err := ParseURI(s)
		if err == nil && (tg.Network == "" || tg.Address == "") {
			t.Fatalf("ParseURI(%q) = %+v without an address", s, tg)
		}
	})
}
