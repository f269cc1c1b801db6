package agent

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
)

// TestRestoreToDevice writes an image back to an unmounted loop device,
// zero chunks included (the device's old content must not show through),
// and refuses a mounted one.
func TestRestoreToDevice(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.LoopDevices, testenv.Mkfs("ext4"), testenv.Mountable("ext4"))
	const size = 32 << 20
	dir := testenv.TempDir(t)
	img := filepath.Join(dir, "backup.img")
	testenv.WriteRandomFile(t, img, size, 11)
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	clear(data[4<<20 : 9<<20]) // a hole the restore must write as zeroes
	if err := os.WriteFile(img, data, 0o600); err != nil {
		t.Fatal(err)
	}
	dev := testenv.NewLoopDevice(t, size)
	// Old content everywhere, so that skipped zero chunks would show.
	old := bytes.Repeat([]byte{0xa5}, size)
	if err := os.WriteFile(dev.Image, old, 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := System.Restore(context.Background(), img, dev.Path, RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Size != size || res.Written != size {
		t.Fatalf("restore to a device: %+v, want every byte written", res)
	}
	got := make([]byte, size)
	f, err := os.Open(dev.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("the device differs from the image after the restore")
	}

	dev.Mkfs(t, "ext4")
	dev.Mount(t)
	_, err = System.Restore(context.Background(), img, dev.Path, RestoreOptions{})
	if err == nil || !strings.Contains(err.Error(), "is mounted") {
		t.Fatalf("restore to a mounted device: %v, want a refusal", err)
	}
}
