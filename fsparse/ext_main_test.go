package fsparse

import (
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
)

// TestMain is shared by every test of the package (ext, XFS, ReiserFS):
// testenv releases loop devices and mounts even when a test is interrupted.
func TestMain(m *testing.M) { testenv.Main(m) }
