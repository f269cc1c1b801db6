package fsparse

import (
	"context"
	"encoding/binary"
	"testing"
)

// reiserFuzzLen bounds the patch: the fuzzer minimises every new input,
// so small inputs keep it fast.
const reiserFuzzLen = 512

// FuzzReiserFS overwrites the superblock, the start of bitmap 0 or the
// journal header of a real small ReiserFS (see testdata) and maps it: no
// panic, no hang, and any map it returns is sorted, merged and inside the
// filesystem and the device.
func FuzzReiserFS(f *testing.F) {
	var bases [][]byte
	var regions [][]int64
	for _, c := range xrTestdata {
		if c.fstype != "reiserfs" {
			continue
		}
		img := xrImage(f, c.file)
		sb, err := readReiserSuper(xrMem(img), int64(len(img)))
		if err != nil {
			f.Fatal(err)
		}
		bases = append(bases, img)
		jh := (int64(sb.journalStart) + int64(sb.journalSize)) * sb.blockSize
		rs := []int64{reiserSBOffset, int64(sb.bitmapBlock(0)) * sb.blockSize, jh}
		regions = append(regions, rs)
		i := uint8(len(bases) - 1)
		for r, at := range rs {
			f.Add(i, uint8(r), img[at:at+reiserFuzzLen])
		}
		// A journal header pointing at a pending transaction.
		p := append([]byte(nil), img[jh:jh+16]...)
		binary.LittleEndian.PutUint32(p[4:], 1)
		f.Add(i, uint8(2), p)
	}
	f.Fuzz(func(t *testing.T, which, region uint8, patch []byte) {
		i := int(which) % len(bases)
		base := bases[i]
		at := regions[i][int(region)%len(regions[i])]
		img := &overlay{base: base, patch: patch[:min(len(patch), reiserFuzzLen)], at: at}
		size := int64(len(base))
		info, used, err := InUse(context.Background(), img, size)
		if err != nil {
			return
		}
		xrCheckMap(t, info, used, size)
		if d, err := Detect(img, size); err != nil || d.UsedBytes != info.UsedBytes {
			t.Fatalf("Detect %+v, %v; InUse used %d", d, err, info.UsedBytes)
		}
	})
}
