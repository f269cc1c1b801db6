// Package bytesize formats byte counts for people, in binary units.
package bytesize

import "fmt"

// IEC renders n bytes with one decimal in the largest binary unit that
// keeps the number at least 1: "512 B", "1.5 KiB", "152.5 MiB", "2.0 TiB".
func IEC(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
