package blockdev

import (
	"testing"

	"github.com/blockimage/blockimage/internal/testenv"
)

func TestMain(m *testing.M) {
	Main() // the watchdog and the test helpers run here when re-executed
	testenv.Main(m)
}
