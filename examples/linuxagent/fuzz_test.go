package main

import "testing"

// FuzzParseRate: any string yields a non-negative rate or an error, never
// a panic or an overflow.
func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"0", "50M", "1.5G/s", "200KiB", "2MB/s", "", "-1", "1e30G", "NaN", "Inf", "9223372036854775807T"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := parseRate(s)
		if err == nil && v < 0 {
			t.Fatalf("parseRate(%q) = %d", s, v)
		}
	})
}
