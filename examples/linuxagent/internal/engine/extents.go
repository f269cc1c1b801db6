package engine

import "slices"

// mergeExtents sorts extents and merges the ones that overlap or touch,
// dropping empty ones, so that no byte is copied twice in a pass.
func mergeExtents(es []Extent) []Extent {
	es = slices.DeleteFunc(es, func(e Extent) bool { return e.Length <= 0 })
	slices.SortFunc(es, func(a, b Extent) int {
		switch {
		case a.Offset < b.Offset:
			return -1
		case a.Offset > b.Offset:
			return 1
		}
		return 0
	})
	out := es[:0]
	for _, e := range es {
		if n := len(out); n > 0 && e.Offset <= out[n-1].Offset+out[n-1].Length {
			if end := e.Offset + e.Length; end > out[n-1].Offset+out[n-1].Length {
				out[n-1].Length = end - out[n-1].Offset
			}
			continue
		}
		out = append(out, e)
	}
	return out
}
