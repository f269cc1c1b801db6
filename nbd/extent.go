package nbd

import "sort"

// An Extent is a byte range of an export.
type Extent struct {
	Offset, Length int64
}

// End returns Offset+Length.
func (e Extent) End() int64 { return e.Offset + e.Length }

// extentSet is a sorted list of disjoint, non-adjacent extents.
type extentSet []Extent

// add inserts [off, off+n), merging with neighbours.
func (s *extentSet) add(off, n int64) {
	if n <= 0 {
		return
	}
	end := off + n
	l := *s
	// First extent whose end reaches off.
	i := sort.Search(len(l), func(i int) bool { return l[i].End() >= off })
	j := i
	for j < len(l) && l[j].Offset <= end {
		off = min(off, l[j].Offset)
		end = max(end, l[j].End())
		j++
	}
	merged := Extent{off, end - off}
	if i == j {
		l = append(l, Extent{})
		copy(l[i+1:], l[i:])
		l[i] = merged
	} else {
		l[i] = merged
		l = append(l[:i+1], l[j:]...)
	}
	*s = l
}

// remove deletes [off, off+n) from the set.
func (s *extentSet) remove(off, n int64) {
	if n <= 0 || len(*s) == 0 {
		return
	}
	end := off + n
	l := *s
	i := sort.Search(len(l), func(i int) bool { return l[i].End() > off })
	if i == len(l) || l[i].Offset >= end {
		return
	}
	var out []Extent
	out = append(out, l[:i]...)
	for ; i < len(l) && l[i].Offset < end; i++ {
		e := l[i]
		if e.Offset < off {
			out = append(out, Extent{e.Offset, off - e.Offset})
		}
		if e.End() > end {
			out = append(out, Extent{end, e.End() - end})
		}
	}
	out = append(out, l[i:]...)
	*s = out
}

// clone returns a copy.
func (s extentSet) clone() []Extent { return append([]Extent(nil), s...) }
